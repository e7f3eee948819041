"""One prompt encoding: a counting prompt as the model sees it, with its named token positions.

Built once per (example, model, template) and used by every stage that needs a position: the
formatted prompt (the model's chat or raw format, BOS as `models/prompts.py` decides) plus the
template's answer prefix `(`, tokenized without special tokens, and found with the tokenizer's
offset mapping on that text, so the word-level organism and byte-level BPE models share the code:

  answer     the last token, the one that predicts the count digit
  words      per list word, its token span [start, end) (a word's last token is where it is complete)
  category   the last token of the category name, before any list word

Raises InputError (one line) when a position cannot be found: a tokenizer without offsets, or a
prompt that the formatted text does not contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from countlens.data.templates import Template, category_char_span, word_char_span
from countlens.errors import InputError


def token_span(offsets: list[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """[first, last + 1) of the tokens that overlap characters span = (s, e)."""
    s, e = span
    hits = [i for i, (a, b) in enumerate(offsets) if a < e and b > s]
    if not hits:
        raise InputError(f"no token covers characters {s}..{e} of the formatted prompt")
    return hits[0], hits[-1] + 1


@dataclass(frozen=True)
class PromptEncoding:
    ids: list[int]
    answer: int
    words: list[tuple[int, int]]
    category: int

    @property
    def items(self) -> list[int]:
        """Each list word's last token."""
        return [e - 1 for _, e in self.words]

    def named(self) -> dict[str, int]:
        """{"category word": i, "item 1": i, ..., "last item": i, "answer position": i} for labels."""
        out = {"category word": self.category}
        for k, t in enumerate(self.items[:-1]):
            out[f"item {k + 1}"] = t
        if self.items:
            out["last item"] = self.items[-1]
        out["answer position"] = self.answer
        return out


def encode_prompt(handle: Any, template: Template, category: str, words: list[str]) -> PromptEncoding:
    """The prompt template.render(category, words) as `handle` runs it, with its named positions."""
    prompt = template.render(category, words)
    formatted = handle.format(prompt)
    at = formatted.find(prompt)
    if at < 0:
        raise InputError("the formatted prompt does not contain the prompt text (a chat template that rewrites it?)")
    tok = handle.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError(f"positions need a fast tokenizer with offsets; {type(tok).__name__} has none")
    enc = tok(formatted + template.answer_prefix, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    spans = []
    for i in range(len(words)):
        s, e = word_char_span(template, category, words, i)
        spans.append(token_span(offsets, (at + s, at + e)))
    s, e = category_char_span(template, category, words)
    return PromptEncoding(ids=ids, answer=len(ids) - 1, words=spans,
                          category=token_span(offsets, (at + s, at + e))[1] - 1)
