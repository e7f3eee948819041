"""Prompt formatting shared by every stage (and by organism training, so it sees exactly this).

`chat`: the prompt is the user message of the tokenizer's chat template with the generation
prompt added; the template emits any BOS itself (as `apply_chat_template` does in transformers).
`raw`: the prompt text with the tokenizer's BOS text in front whenever the tokenizer has a BOS
token, whether or not it adds it itself. Formatted text is always encoded with
`add_special_tokens=False`, so the BOS must be in the text: a tokenizer that adds BOS itself
(Llama, Gemma, Mistral) gets it, a tokenizer with a BOS it does not add (GPT-2, SmolLM2) gets it
too (TransformerLens' `prepend_bos` convention: position 0 is then the same token for every
prompt), and a tokenizer without one (Qwen2) gets none. `auto`: chat when the tokenizer has a
chat template, else raw.
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


def bos_kind(tokenizer: Any) -> str:
    """'adds' (the tokenizer prepends BOS itself), 'has' (has one, does not add it) or 'none'."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return "none"
    return "adds" if tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos_id] else "has"


def format_prompt(tokenizer: Any, prompt: str, prompt_format: str, system: str | None = None) -> str:
    """The text the model sees before its answer (a resolved format: 'chat' or 'raw')."""
    if prompt_format == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None) if bos_kind(tokenizer) != "none" else None
    return (bos if bos and not prompt.startswith(bos) else "") + prompt


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system message the chat template adds when none is given (SmolLM2's, Qwen2.5's), or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00USER\x00"
    plain = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                          add_generation_prompt=False)
    head = plain[:plain.index(marker)] if marker in plain else plain
    try:
        with_sys = tokenizer.apply_chat_template([{"role": "system", "content": "\x00SYS\x00"},
                                                  {"role": "user", "content": marker}], tokenize=False,
                                                 add_generation_prompt=False)
    except Exception:  # noqa: BLE001  (templates that reject a system role)
        return None
    sys_head = with_sys[:with_sys.index("\x00SYS\x00")]
    # The default system text is what the plain render holds between the system header and the user turn.
    if head.startswith(sys_head) and len(head) > len(sys_head):
        tail = with_sys[with_sys.index("\x00SYS\x00") + len("\x00SYS\x00"):with_sys.index(marker)]
        body = head[len(sys_head):]
        return body[:len(body) - len(tail)] if tail and body.endswith(tail) else body
    return None


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of formatted text; special tokens are already in the text."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
