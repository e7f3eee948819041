"""Audit a dataset against a lexicon (ours or the original study's) and optionally relabel it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from countlens.data.lexicon import Lexicon, load_lexicon
from countlens.data.schema import read_examples
from countlens.data.templates import DEFAULT as DEFAULT_TEMPLATE
from countlens.io import write_jsonl


def validate_dataset(path: str | Path, lexicon: str | Lexicon | None = None, *, n: int | None = None,
                     fix: str | Path | None = None) -> dict:
    """Count label errors, repeated words, ambiguous and unknown words; `fix` writes a relabelled copy.

    A label error is a row whose `answer` differs from the number of its words that the
    lexicon puts in the row's category. Malformed rows raise an InputError (file, line, field).
    """
    lex = load_lexicon(lexicon)
    label_errors = duplicates = ambiguous_rows = length_errors = 0
    unknown: Counter[str] = Counter()
    balance: Counter[int] = Counter()
    error_examples: list[dict] = []
    fixed: list[dict] = []
    rows = 0
    for lineno, ex in read_examples(path, n, categories=set(lex.categories)):
        rows += 1
        balance[ex.answer] += 1
        true = lex.count(ex.category, ex.word_list)
        if true != ex.answer:
            label_errors += 1
            if len(error_examples) < 10:
                error_examples.append({"line": lineno, "category": ex.category, "answer": ex.answer,
                                       "lexicon_count": true})
        duplicates += len(set(ex.word_list)) != len(ex.word_list)
        ambiguous_rows += any(w in lex.ambiguous for w in ex.word_list)
        length_errors += ex.list_length is not None and ex.list_length != len(ex.word_list)
        unknown.update(w for w in ex.word_list if not lex.places(w))
        if fix is not None:
            members = set(lex.categories[ex.category])
            completion = re.sub(r"\d+", str(true), ex.expected_completion, count=1) \
                if ex.expected_completion else f"({true})"
            row = ex.row() | {"answer": true, "list_length": len(ex.word_list),
                              "expected_completion": completion,
                              "template": ex.template or DEFAULT_TEMPLATE,
                              "match_positions": [i for i, w in enumerate(ex.word_list) if w in members]}
            fixed.append(row)
    if fix is not None:
        write_jsonl(fix, fixed)
    return {
        "file": str(path), "lexicon": lex.name, "rows": rows, "label_errors": label_errors,
        "duplicate_word_lists": duplicates, "ambiguous_rows": ambiguous_rows,
        "unknown_words": len(unknown), "unknown_word_list": sorted(unknown),
        "list_length_errors": length_errors,
        "balance": {str(k): v for k, v in sorted(balance.items())},
        "label_error_examples": error_examples,
        "ambiguous_words": {w: list(p) for w, p in sorted(lex.ambiguous.items())},
        **({"fixed_out": str(fix)} if fix is not None else {}),
    }
