"""One stored result per (model, example, settings): its key, and how a completion becomes a record.

The key hashes everything that can change an answer: the model and its weights/revision, the
example id and prompt hash, mode, prompt format and chat template, generation settings, system
prompt, parser version, and the template's name when the bench renders its own prompts
(--template). Parsing happens here, never in a backend.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from countlens.backends.base import Completion, GenSettings, Scored, Usage
from countlens.bench.data import BenchExample
from countlens.data.answers import PARSER_VERSION, parse_lenient, parse_strict

STATUS_OK, STATUS_API_ERROR = "ok", "api_error"


@dataclass
class Record(Usage):
    key: str
    model: str
    example_id: str
    line: int
    prompt_hash: str
    mode: str
    answer: int
    category: str | None
    list_length: int | None
    status: str
    completion: str | None = None
    api_error: str | None = None
    pred: int | None = None          # lenient parse (generate) or argmax (score)
    pred_strict: int | None = None
    correct: bool = False
    correct_strict: bool = False
    error_kind: str | None = None    # None | parse | numerical | api
    probs: list[float] | None = None  # score mode: P(0..K), normalised over the answers
    p_correct: float | None = None
    expected_count: float | None = None
    parser_version: str = PARSER_VERSION
    template: str | None = None      # --template: the template that rendered this prompt
    key_fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Record":
        return cls(**json.loads(text))


def _columns() -> list[str]:
    """records.parquet's column order (a contract): the usage columns after `error_kind`, as before
    they moved into `Usage`."""
    own = [f for f in Record.__dataclass_fields__ if f not in Usage.__dataclass_fields__]
    at = own.index("error_kind") + 1
    return own[:at] + list(Usage.__dataclass_fields__) + own[at:]


COLUMNS = _columns()


def key_fields(identity: dict, ex: BenchExample, mode: str, settings: GenSettings, k_max: int | None,
               template: str | None = None) -> dict:
    """The key's material, kept in each record so a reader can see why two records differ.

    `template` (the name of the template that rendered the prompt, with --template) is part of the
    key only when given, so runs on the data file's own prompts keep their keys."""
    if mode == "score":  # length and prefill do not matter to a single forward pass; K does
        gen = {"answer_prefix": settings.answer_prefix, "system": settings.system, "k_max": k_max}
    else:
        gen = settings.to_dict()
    fields = {"model": identity, "example_id": ex.id, "prompt_hash": ex.prompt_hash, "mode": mode,
              "settings": gen, "parser_version": PARSER_VERSION}
    if template is not None:
        fields["template"] = template
    return fields


def record_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _base(model: str, ex: BenchExample, mode: str, fields: dict, status: str) -> dict:
    return dict(key=record_key(fields), model=model, example_id=ex.id, line=ex.line, prompt_hash=ex.prompt_hash,
                mode=mode, answer=ex.answer, category=ex.category, list_length=ex.list_length, status=status,
                template=fields.get("template"), key_fields=fields)


def from_completion(model: str, ex: BenchExample, fields: dict, c: Completion) -> Record:
    """Parse a reply with both parsers; name the error kind (api, parse, numerical) as the original."""
    common = c.usage()
    if c.text is None:
        return Record(**_base(model, ex, "generate", fields, STATUS_API_ERROR), api_error=c.error or "API error",
                      error_kind="api", **common)
    pred, strict = parse_lenient(c.text), parse_strict(c.text)
    kind = "parse" if pred is None else (None if pred == ex.answer else "numerical")
    return Record(**_base(model, ex, "generate", fields, STATUS_OK), completion=c.text, pred=pred, pred_strict=strict,
                  correct=pred == ex.answer, correct_strict=strict == ex.answer, error_kind=kind, **common)


def from_scored(model: str, ex: BenchExample, fields: dict, s: Scored) -> Record:
    """Score mode: the distribution over 0..K renormalised over the answers; argmax is the prediction."""
    m = max(s.logprobs)
    weights = [math.exp(x - m) for x in s.logprobs]
    total = sum(weights)
    probs = [w / total for w in weights]
    pred = max(range(len(probs)), key=probs.__getitem__)
    p_correct = probs[ex.answer] if ex.answer < len(probs) else 0.0
    expected = sum(k * p for k, p in enumerate(probs))
    return Record(**_base(model, ex, "score", fields, STATUS_OK), pred=pred, pred_strict=pred,
                  correct=pred == ex.answer, correct_strict=pred == ex.answer,
                  error_kind=None if pred == ex.answer else "numerical", input_tokens=s.input_tokens,
                  probs=[round(p, 6) for p in probs], p_correct=round(p_correct, 6),
                  expected_count=round(expected, 6))
