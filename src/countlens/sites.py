"""Where in a model a number comes from: one `Site` type and one layer convention for the whole project.

Layer L always means the *output* of decoder block L (0-based); layer "emb" is the input of
block 0 (token embeddings plus whatever the architecture adds before the first block:
position embeddings for GPT-2, the sqrt(d) scale for Gemma). HF's `hidden_states[L+1]` is
our layer L except for the last one, which transformers returns after the final norm.

Site kinds:
  resid  residual stream after block L (or "emb")
  attn   attention output of block L (before it is added to the residual; for Gemma, before the
         post-attention norm; for GPT-NeoX's parallel residual, the attention branch)
  mlp    MLP output of block L (likewise before Gemma's post-feedforward norm)
  head   input of the attention output projection of block L, [..., n_heads, head_dim] (query
         heads on GQA models); `Site("head", L, h)` is one head of it

Written as text, a site is "resid.emb", "resid.3", "attn.3", "head.3" (every head) or "head.3.5"
(head 5): the names of the activation store's files and of every table's `site` column. Pure Python:
the report and the result files use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Layer = Union[int, str]  # 0..L-1 or "emb"
KINDS = ("resid", "attn", "mlp", "head")


def parse_layer(x: object) -> Layer:
    """"emb" stays "emb"; anything else is a block index ("3", 3, 3.0 -> 3)."""
    return "emb" if str(x) == "emb" else int(x)  # type: ignore[arg-type]


def layer_key(x: object) -> int:
    """Sort key in depth order: "emb" (-1) before block 0."""
    return -1 if str(x) == "emb" else int(x)  # type: ignore[arg-type]


def every_layer(n_layers: int) -> list[Layer]:
    """["emb", 0, 1, ..., L-1]: every residual layer of a model with n_layers blocks."""
    return ["emb", *range(n_layers)]


@dataclass(frozen=True)
class Site:
    kind: str
    layer: Layer
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"site kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "layer", parse_layer(self.layer))
        if self.layer == "emb" and self.kind != "resid":
            raise ValueError("layer 'emb' exists only for the residual stream")
        if self.head is not None and self.kind != "head":
            raise ValueError(f"only head sites name a head, got {self.kind}.{self.layer}.{self.head}")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}" + ("" if self.head is None else f".{self.head}")

    @classmethod
    def parse(cls, text: str) -> Site:
        """"resid.3" / "resid.emb" / "head.3.5" -> Site; ValueError naming the text otherwise."""
        parts = str(text).split(".")
        try:
            if len(parts) == 2:
                return cls(parts[0], parse_layer(parts[1]))
            if len(parts) == 3:
                return cls(parts[0], parse_layer(parts[1]), int(parts[2]))
        except ValueError as e:
            raise ValueError(f"bad site {text!r}: {e}") from None
        raise ValueError(f"bad site {text!r}: write kind.layer or head.layer.head, e.g. resid.3")

    @property
    def module_site(self) -> Site:
        """The hooked tensor this site lives in (a head's site without its head)."""
        return self if self.head is None else Site(self.kind, self.layer)

    def sort_key(self) -> tuple[int, int, int]:
        return KINDS.index(self.kind), layer_key(self.layer), -1 if self.head is None else self.head
