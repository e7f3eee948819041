"""Prompt formatting shared by every stage (and by organism training, so it sees exactly this).

`chat`: the prompt is the user message of the tokenizer's chat template with the generation
prompt added (the template emits any BOS itself). `raw`: the prompt text as is, with the
tokenizer's BOS prepended when it has one and does not add it itself. `auto`: chat when the
tokenizer has a chat template, else raw.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("auto", "chat", "raw")


def resolve_format(tokenizer: Any, prompt_format: str = "auto") -> str:
    if prompt_format not in FORMATS:
        raise ValueError(f"prompt format must be one of {FORMATS}, got {prompt_format!r}")
    if prompt_format == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        from countlens.errors import InputError

        raise InputError("--prompt-format chat: this tokenizer has no chat template; use raw")
    return prompt_format


def format_prompt(tokenizer: Any, prompt: str, prompt_format: str, system: str | None = None) -> str:
    """The text the model sees before its answer (a resolved format: 'chat' or 'raw')."""
    if prompt_format == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bos and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return (bos if bos and not adds_bos and not prompt.startswith(bos) else "") + prompt


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of formatted text; special tokens are already in the text."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
