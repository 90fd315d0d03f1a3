"""``Engine``: the core's steps driven for callers in the same process. ``generate``, ``stream``
and ``score_choices`` step the engine until their requests end, and keep the outputs of requests
they did not add for the next ``step()``."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np

from radixrt.engine.core import EngineCore
from radixrt.outputs import ChoiceScore, GenerateOutput, RequestFailed, RequestOutput, choice_requests, choice_scores
from radixrt.params import SamplingParams
from radixrt.prompts import Prompt, chat_ids, prompt_ids


class Engine(EngineCore):
    """``Engine(model=None)`` serves the default model (SmolLM2-135M-Instruct); ``model`` may be a
    Hugging Face directory or a .gguf file. The KV pool takes ``kv_cache_bytes``: by default 512 MiB
    on a CPU, and 80% of the device memory left free by the weights on a GPU. Below it,
    ``host_cache_bytes`` of host memory and ``disk_cache`` (a directory) of ``disk_cache_bytes``
    keep what the pool evicts (``close()`` writes out what the disk has queued); a namespace may
    retain at most ``retention_cap_bytes``; ``eviction`` is ``"lru"`` or ``"adaptive"``.

    ``detokenize=False`` deals in token ids only: outputs carry no text and stop strings are
    refused (a server's worker, whose router owns text)."""

    # ---- drivers ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | None = None,
        *,
        namespace: Hashable = None,
        tenant: str | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Run prompts to the end; a failed request's output has finish reason "error" and its
        ``error``. A bad prompt in a list raises ``ValueError`` and queues none of them."""
        single = isinstance(prompts, (str, np.ndarray)) or (
            len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))
        )
        batch = [prompts] if single else list(prompts)
        ids = self._add_all([(p, {}) for p in batch], params, namespace, tenant)
        collected = {rid: GenerateOutput(rid, arrival=self.requests[rid].arrival) for rid in ids}
        for out in self._drive(ids):
            collected[out.request_id].add(out)
        outputs = [collected[rid] for rid in ids]
        return outputs[0] if single else outputs

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: Hashable = None,
        tenant: str | None = None,
    ) -> Iterator[str]:
        """The text as it is generated, piece by piece (never a piece of a stop string). Raises
        ``RequestFailed`` if the request fails; closing the iterator early aborts it."""
        for out in self._drive(self._add_all([(prompt, {})], params, namespace, tenant)):
            if out.text:
                yield out.text
            if out.error is not None:
                raise RequestFailed(out.error)

    def score_choices(
        self, prompt: Prompt, choices: Sequence[Prompt], namespace: Hashable = None, *, tenant: str | None = None
    ) -> list[ChoiceScore]:
        """The log-probability of each token of each continuation in ``choices`` after ``prompt``
        (what the frontend's ``select`` ranks). Each choice is a request that the scheduler
        batches with the rest; the prompt is computed once and shared through the cache."""
        base = prompt_ids(prompt, self.tokenizer).tolist()
        options = [prompt_ids(c, self.tokenizer).tolist() for c in choices]
        if not base or not options or any(not o for o in options):
            raise ValueError("score_choices needs a non-empty prompt, at least one choice, and no empty choice")
        ids = self._add_all(choice_requests(base, options), SamplingParams(max_new_tokens=0), namespace, tenant)
        finished = {}
        for out in self._drive(ids):
            if out.error is not None:
                raise RequestFailed(out.error)
            if out.finished:
                finished[out.request_id] = out
        return choice_scores(base, options, [finished[rid] for rid in ids])

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        return chat_ids(self._tokenizer(), messages, add_generation_prompt)

    def _drive(self, ids: list[str]) -> Iterator[RequestOutput]:
        """The outputs of ``ids`` (requests this driver added), stepping the engine until all have
        ended; outputs of other requests are kept for ``step()``. Closing it aborts the rest."""
        for rid in ids:
            self._mailboxes[rid] = []
        pending = set(ids)
        try:
            while pending:
                for rid in ids:
                    mail, self._mailboxes[rid] = self._mailboxes[rid], []
                    for out in mail:
                        if out.finished:
                            pending.discard(rid)
                        yield out
                if pending:
                    self._advance()
        finally:
            for rid in pending:
                self.abort(rid)
            for rid in ids:
                self._mailboxes.pop(rid, None)

    def _add_all(
        self,
        prompts: list[tuple[Prompt, dict]],
        params: SamplingParams | None,
        namespace: Hashable,
        tenant: str | None = None,
    ) -> list[str]:
        """Add every prompt or, if one is refused, none."""
        ids: list[str] = []
        try:
            for prompt, options in prompts:
                ids.append(self.add_request(prompt, params, namespace=namespace, tenant=tenant, **options))
        except Exception:
            for rid in ids:
                self.scheduler.remove(self.requests.pop(rid))
            raise
        return ids
