"""Constrained decoding: a request's regex, JSON schema or choices, compiled by xgrammar into a
matcher that says which tokens may come next. Before each sampling, the token masks of every
constrained request in the batch are filled and applied to their logits in one call; after it,
each matcher takes the sampled token.

A JSON schema's output is strict JSON (RFC 8259), whatever xgrammar's own lowering of the schema allows:
see ``strict_json_grammar``. Compiled grammars are cached by xgrammar, so a schema that many requests share
is compiled once; the cache is bounded (``GRAMMAR_CACHE_BYTES``), or every distinct constraint a tenant sends
would stay in memory. xgrammar is imported on the first constrained request: an engine that never sees one
never loads it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import torch

from radixrt.params import SamplingParams

# In xgrammar's printed EBNF: a quoted literal (a Regex's pattern too), or a character class.
_LITERAL_OR_CLASS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', re.DOTALL)
_BOUNDED_STRING_CHARACTER = r"[^\"\\\r\n]"
_STRICT_STRING_CHARACTER = r"[^\"\\\0-\x1f]"
GRAMMAR_CACHE_BYTES = 64 << 20  # xgrammar's compiled grammars (a compiled schema of 64 KiB takes about 10 MB)


@functools.lru_cache(maxsize=32)  # an EBNF is up to ~5 times its schema (at most 64 KiB): ~12 MB
def strict_json_grammar(schema: str) -> str:
    r"""The EBNF of xgrammar's grammar for ``schema``, with no raw control character allowed in strings.

    xgrammar (0.2.9 at least, mlc-ai/xgrammar#800) lowers a string with ``minLength`` or ``maxLength`` to
    repetitions of the class ``[^"\\\r\n]``, which lets U+0000..U+001F other than CR and LF through unescaped,
    and strict parsers (Python's ``json.loads``) reject the output. That class becomes the one xgrammar's
    unbounded strings use; literals are left alone. Escapes stay out of bounded strings, as xgrammar has them.
    """
    import xgrammar

    ebnf = str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))
    return _LITERAL_OR_CLASS.sub(
        lambda m: _STRICT_STRING_CHARACTER if m[0] == _BOUNDED_STRING_CHARACTER else m[0], ebnf
    )


class Grammars:
    """Compiles constraints against one tokenizer, and masks the logits of constrained requests
    (a logits processor: ``ModelRunner.logits_processors``)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.vocab_size = vocab_size
        self.compiler = xgrammar.GrammarCompiler(
            xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size),
            max_threads=1,
            cache_limit_bytes=GRAMMAR_CACHE_BYTES,
        )

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
                grammar = self.compiler.compile_grammar(strict_json_grammar(params.json_schema))
            else:
                alternatives = " | ".join(json.dumps(c) for c in params.choices)
                grammar = self.compiler.compile_grammar(f"root ::= {alternatives}")
        except (RuntimeError, ValueError, TypeError) as e:
            kind = (
                "regex" if params.regex is not None else "json_schema" if params.json_schema is not None else "choices"
            )
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
