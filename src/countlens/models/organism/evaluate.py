"""Greedy accuracy of a model handle on fresh examples of its native template."""

from __future__ import annotations

from countlens.data.answers import parse_lenient, parse_strict
from countlens.data.generate import generate_examples
from countlens.models.generation import greedy_generate
from countlens.models.handle import ModelHandle


def evaluate(handle: ModelHandle, n: int = 2000, seed: int = 918_274, min_len: int = 5, max_len: int = 10,
             max_count: int = 5) -> dict:
    tpl = handle.template()
    rows = generate_examples(n, seed, template=tpl, min_len=min_len, max_len=max_len, max_count=max_count)
    outs = greedy_generate(handle, [handle.format(r["prompt"]) for r in rows], max_new_tokens=6)
    correct = sum(parse_lenient(o) == r["answer"] for o, r in zip(outs, rows))
    strict = sum(parse_strict(o) == r["answer"] for o, r in zip(outs, rows))
    return {"n": n, "seed": seed, "template": tpl.name, "accuracy": correct / n, "accuracy_strict": strict / n,
            "example_output": outs[0]}
