"""Model SPEC strings: `organism`, `hf:NAME_OR_PATH` (or bare), `openai:MODEL[@BASE_URL]`,
`anthropic:MODEL`, `bedrock:MODEL_ID`.

The SPEC is split at its first colon only: Bedrock model IDs contain colons
(`anthropic.claude-3-haiku-20240307-v1:0`) and so do some local model names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from countlens.errors import InputError

KINDS = ("hf", "openai", "anthropic", "bedrock")
API_KINDS = ("openai", "anthropic", "bedrock")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed SPEC; `label` names the model in every result."""

    text: str
    kind: str            # hf | openai | anthropic | bedrock
    name: str            # folder, hub name or provider model id
    base_url: str | None = None

    @property
    def label(self) -> str:
        """The SPEC as written in results: any credentials in a base URL are dropped."""
        if self.base_url and strip_userinfo(self.base_url) != self.base_url:
            return f"{self.kind}:{self.name}@{strip_userinfo(self.base_url)}"
        return self.text

    @property
    def is_api(self) -> bool:
        return self.kind in API_KINDS


def strip_userinfo(url: str | None) -> str | None:
    """A base URL without any `user:password@` part, so it can be written to result files."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def parse_spec(text: str) -> ModelSpec:
    """Parse one SPEC; anything without a known `kind:` prefix is a Hugging Face name or folder."""
    text = (text or "").strip()
    if not text:
        raise InputError("empty model SPEC", field="model")
    if text == "organism":
        return ModelSpec(text, "hf", "organism")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        return ModelSpec(text, "hf", text)  # bare hub name or folder (may itself hold a colon)
    if not rest:
        raise InputError(f"SPEC '{text}' names no model after '{kind}:'", field="model")
    if kind == "openai":
        # MODEL@BASE_URL: split before the URL's scheme so model names may still hold '@'.
        m = re.search(r"@(?=https?://)", rest)
        model, base = (rest[:m.start()], rest[m.end():]) if m else (rest, None)
        if not model:
            raise InputError(f"SPEC '{text}' names no model before '@'", field="model")
        return ModelSpec(text, kind, model, base)
    return ModelSpec(text, kind, rest)
