"""Balanced, deterministic generation of counting examples.

Counts are exactly balanced (a cycle, not random draws), and so are list lengths and
categories, each shuffled independently, so rows are not grouped and no slice is confounded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from countlens.data.lexicon import Lexicon, load_lexicon
from countlens.data.templates import Template, load_template
from countlens.errors import InputError
from countlens.io import write_jsonl


def make_example(rng: random.Random, lexicon: Lexicon, template: Template, category: str,
                 count: int, length: int, ex_id: str) -> dict:
    """One row: `count` words of `category` and `length - count` words from anywhere else."""
    members = list(lexicon.categories[category])
    others = [w for c, ws in lexicon.categories.items() if c != category for w in ws] + list(lexicon.noise)
    others = list(dict.fromkeys(w for w in others if w not in set(members)))
    words = rng.sample(members, count) + rng.sample(others, length - count)
    rng.shuffle(words)
    member_set = set(members)
    return {
        "id": ex_id,
        "prompt": template.render(category, words),
        "category": category,
        "word_list": words,
        "answer": count,
        "list_length": length,
        "expected_completion": template.expected_completion(count),
        "template": template.name,
        "match_positions": [i for i, w in enumerate(words) if w in member_set],
    }


def generate_examples(n: int, seed: int = 0, *, template: str | Template | None = None,
                      lexicon: str | Lexicon | None = None, min_len: int = 5, max_len: int = 10,
                      max_count: int = 5, categories: Sequence[str] | None = None) -> list[dict]:
    """`n` rows; counts 0..max_count, lengths and categories each balanced to within one."""
    lex, tpl = load_lexicon(lexicon), load_template(template)
    lex.require_clean()
    cats = list(categories) if categories else list(lex.categories)
    for c in cats:
        if c not in lex.categories:
            raise InputError(f"unknown category '{c}' (lexicon '{lex.name}' has: {', '.join(lex.categories)})",
                             field="categories")
    if n < 0 or min_len < 1 or max_len < min_len or max_count < 0:
        raise InputError(f"need n >= 0, 1 <= min_len <= max_len, max_count >= 0 "
                         f"(got n={n}, min_len={min_len}, max_len={max_len}, max_count={max_count})")
    if max_count > max_len:
        raise InputError(f"max_count {max_count} exceeds max_len {max_len}")
    smallest = min(len(lex.categories[c]) for c in cats)
    if max_count > smallest:
        raise InputError(f"max_count {max_count} exceeds the smallest category ({smallest} words)")
    rng = random.Random(seed)

    def balanced(values: list) -> list:
        """n values, each value within one of n/len(values) times, in random order."""
        out = [values[i % len(values)] for i in range(n)]
        rng.shuffle(out)
        return out

    # Each axis exactly balanced on its own and paired at random: no slice confounds another.
    counts = balanced(list(range(max_count + 1)))
    lengths = balanced(list(range(min_len, max_len + 1)))
    cat_axis = balanced(rng.sample(cats, len(cats)))
    plan = [(c, k, max(length, k)) for c, k, length in zip(cat_axis, counts, lengths)]
    return [make_example(rng, lex, tpl, cat, count, length, f"s{seed}-{i:06d}")
            for i, (cat, count, length) in enumerate(plan)]


def generate_dataset(out: str | Path, n: int, seed: int = 0, **kwargs) -> dict:
    """Write `n` generated rows to `out` (JSONL, atomically) and return their summary."""
    rows = generate_examples(n, seed, **kwargs)
    write_jsonl(out, rows)
    return summarize(rows) | {"out": str(out), "seed": seed}


def summarize(rows: list[dict]) -> dict:
    from collections import Counter

    by = lambda key: dict(sorted(Counter(r[key] for r in rows).items()))  # noqa: E731
    return {"rows": len(rows), "by_count": {str(k): v for k, v in by("answer").items()},
            "by_list_length": {str(k): v for k, v in by("list_length").items()},
            "by_category": by("category"), "templates": sorted({r.get("template", "?") for r in rows})}
