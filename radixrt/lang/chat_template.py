"""Roles as the served model's own chat template renders them.

A program writes ``s += user("hi")``; that becomes the template's text for a user turn, which we
find by rendering conversations with a marker as the content and cutting around it. A template
that adds a system turn of its own when a conversation has none (SmolLM2's does) gives that turn
as ``default_system_prompt``, which a program whose first role is another gets first, as the
template would have rendered it (and as SGLang does with its templates' default system prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
_MARK = "\x00radixrt-role\x00"


@dataclass(frozen=True)
class ChatTemplate:
    prefix: dict[str, str]
    suffix: dict[str, str]
    default_system_prompt: str | None = None  # the system turn's content the template adds when there is none

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template, so roles (system/user/assistant) cannot be rendered")

        def render(messages: list[dict[str, str]]) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False)

        system, user = {"role": "system", "content": "S"}, {"role": "user", "content": "U"}
        contexts = {"system": [], "user": [system], "assistant": [system, user]}
        prefix, suffix = {}, {}
        for role, before in contexts.items():
            head = render(before) if before else ""
            text = render([*before, {"role": role, "content": _MARK}])
            if not text.startswith(head) or text.count(_MARK) != 1:
                raise ValueError(f"cannot find how this model's chat template renders a {role} turn")
            prefix[role], suffix[role] = text[len(head) :].split(_MARK)
        alone = render([{"role": "user", "content": _MARK}])
        added = alone[: alone.index(_MARK)].removesuffix(prefix["user"])
        default = None
        if added.startswith(prefix["system"]) and added.endswith(suffix["system"]):
            default = added[len(prefix["system"]) : len(added) - len(suffix["system"])] or None
        return cls(prefix, suffix, default)
