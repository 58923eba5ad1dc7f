"""The canonical records every reader produces and every recipe consumes.

A prompt is a conversation so far (``messages``, ending with a user turn); how it is turned into text is the
template's job (``rlhf_lab.data.templates``), so the same records serve any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class Prompt:
    """A conversation that ends with the user's turn; the model writes the next assistant turn."""

    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str, **meta: Any) -> Prompt:
        return cls([{"role": "user", "content": text}], dict(meta))

    @property
    def text(self) -> str:
        """The last user turn (the whole prompt for single-turn data)."""
        return self.messages[-1]["content"]


@dataclass
class Pair:
    """One human preference: ``chosen`` was preferred over ``rejected`` as the reply to ``prompt``."""

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One response to a prompt (SFT target, generation, or scored sample); scores live in ``meta``."""

    prompt: Prompt
    response: str
    meta: dict[str, Any] = field(default_factory=dict)
