"""Constrained decoding: a request's regex, JSON schema or choices, compiled by xgrammar into a
matcher that says which tokens may come next. Before each sampling, the token masks of every
constrained request in the batch are filled and applied to their logits in one call; after it,
each matcher takes the sampled token.

Compiled grammars are cached by xgrammar, so a schema that many requests share is compiled once.
xgrammar is imported on the first constrained request: an engine that never sees one never loads it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from radixrt.params import SamplingParams


class Grammars:
    """Compiles constraints against one tokenizer, and masks the logits of constrained requests
    (a logits processor: ``ModelRunner.logits_processors``)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.vocab_size = vocab_size
        self.compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size),
                                                 max_threads=1)

    def matcher(self, params: SamplingParams) -> Any:
        """A fresh matcher for ``params``' constraint."""
        return self._xgr.GrammarMatcher(self.compile(params))

    def compile(self, params: SamplingParams) -> Any:
        """``params``' constraint compiled (xgrammar caches it); ``ValueError`` naming the problem
        if xgrammar cannot compile it."""
        try:
            if params.regex is not None:
                grammar = self.compiler.compile_regex(params.regex)
            elif params.json_schema is not None:
                grammar = self.compiler.compile_json_schema(params.json_schema, any_whitespace=False)
            else:
                alternatives = " | ".join(json.dumps(c) for c in params.choices)
                grammar = self.compiler.compile_grammar(f"root ::= {alternatives}")
        except (RuntimeError, ValueError, TypeError) as e:
            kind = "regex" if params.regex is not None else "json_schema" if params.json_schema is not None else "choices"
            raise ValueError(f"the {kind} constraint cannot be compiled: {e}") from None
        return grammar

    def __call__(self, logits: torch.Tensor, requests: Sequence) -> None:
        rows = [i for i, r in enumerate(requests) if r.constraint is not None]
        if not rows:
            return
        bitmask = self._xgr.allocate_token_bitmask(len(rows), self.vocab_size)
        for j, i in enumerate(rows):
            requests[i].constraint.fill_next_token_bitmask(bitmask, j)
        picked = logits[rows]
        self._xgr.apply_token_bitmask_inplace(picked, bitmask.to(logits.device), vocab_size=self.vocab_size)
        logits[rows] = picked
