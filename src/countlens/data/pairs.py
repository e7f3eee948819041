"""Token-aligned minimal pairs: two prompts whose counts differ by one.

`low` (count N) and `high` (count N+1) differ in exactly one list word, and under the given
tokenizer both prompts have the same number of tokens and differ only at that word's tokens.
The original study compared prompts position by position even when they tokenised to
different lengths; here a replacement that does not align is re-drawn among words of the
same token length, and a candidate with no aligned replacement is dropped and counted.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from countlens.data.lexicon import Lexicon, load_lexicon
from countlens.data.schema import read_examples
from countlens.data.templates import Template, builtin_templates, load_template, word_char_span
from countlens.errors import InputError
from countlens.io import write_jsonl

CHANGE_AT = ("first", "last", "random", "all")


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def aligned_span(tokenizer: Any, low: str, high: str, low_span: tuple[int, int],
                 high_span: tuple[int, int]) -> tuple[int, int] | None:
    """Token span [s, e) of the changed word if the prompts align, else None.

    Aligned: same token count, and every differing token lies inside the word's span in both.
    """
    a, a_off = encode_with_offsets(tokenizer, low)
    b, b_off = encode_with_offsets(tokenizer, high)
    if len(a) != len(b):
        return None
    inside = lambda off, span: off[1] > span[0] and off[0] < span[1]  # noqa: E731
    word_tokens = [i for i in range(len(a)) if inside(a_off[i], low_span)]
    if not word_tokens or [i for i in range(len(b)) if inside(b_off[i], high_span)] != word_tokens:
        return None
    s, e = word_tokens[0], word_tokens[-1] + 1
    if a[:s] != b[:s] or a[e:] != b[e:]:
        return None
    return s, e


def _template_for(ex, default: Template | None, path: str, lineno: int) -> Template:
    if default is not None:
        tpl = default
    else:
        builtins = builtin_templates()
        name = ex.template or "seed-v1"
        if name not in builtins:
            raise InputError(f"template '{name}' is not built in; pass --template FILE", file=path,
                             line=lineno, field="template")
        tpl = builtins[name]
    if tpl.render(ex.category, ex.word_list) != ex.prompt:
        raise InputError(f"prompt is not template '{tpl.name}' rendered from category and word_list",
                         file=path, line=lineno, field="prompt")
    return tpl


def _row(ex_row: dict, tpl: Template, words: list[str], lex: Lexicon, ex_id: str) -> dict:
    members = set(lex.categories[ex_row["category"]])
    match = [i for i, w in enumerate(words) if w in members]
    return ex_row | {"id": ex_id, "prompt": tpl.render(ex_row["category"], words), "word_list": words,
                     "answer": len(match), "list_length": len(words),
                     "expected_completion": tpl.expected_completion(len(match)), "template": tpl.name,
                     "match_positions": match}


def make_pairs(data: str | Path, tokenizer: Any, n: int, *,
               change_at: str = "first", seed: int = 0, lexicon: str | Lexicon | None = None,
               template: str | Template | None = None,
               tokenizer_name: str = "") -> tuple[list[dict], dict]:
    """Build up to `n` minimal pairs from rows of `data`, balanced over the low count N.

    The low row is a data row whose label agrees with the lexicon; the high row replaces one
    non-matching word (chosen by `change_at`) with an unused word of the row's category.
    """
    if change_at not in CHANGE_AT:
        raise InputError(f"--change-at must be one of {', '.join(CHANGE_AT)}, got '{change_at}'")
    lex = load_lexicon(lexicon)
    tpl_default = load_template(template) if template is not None else None
    rng = random.Random(seed)
    path = str(data)
    examples = list(read_examples(path, categories=set(lex.categories)))
    max_n = max(ex.answer for _, ex in examples) if examples else 0
    cap = math.ceil(n / max(max_n, 1))  # balance pairs over N = 0..max_n-1
    per_n: Counter[int] = Counter()
    pairs: list[dict] = []
    dropped = redrawn = skipped_label = 0
    ntok_cache: dict[str, int] = {}

    def ntok(word: str) -> int:
        if word not in ntok_cache:
            ntok_cache[word] = len(tokenizer(" " + word, add_special_tokens=False)["input_ids"])
        return ntok_cache[word]

    for lineno, ex in examples:
        if len(pairs) >= n:
            break
        members = set(lex.categories[ex.category])
        if lex.count(ex.category, ex.word_list) != ex.answer or len(set(ex.word_list)) != len(ex.word_list):
            skipped_label += 1
            continue
        if ex.answer >= max_n or per_n[ex.answer] >= cap:
            continue
        tpl = _template_for(ex, tpl_default, path, lineno)
        others = [i for i, w in enumerate(ex.word_list) if w not in members]
        if not others:
            continue
        if change_at == "first":
            indices = [others[0]]
        elif change_at == "last":
            indices = [others[-1]]
        elif change_at == "random":
            indices = [rng.choice(others)]
        else:
            indices = others
        unused = [w for w in lex.categories[ex.category] if w not in ex.word_list]
        low_row = ex.row()
        for i in indices:
            if len(pairs) >= n or per_n[ex.answer] >= cap:
                break
            old = ex.word_list[i]
            low_span = word_char_span(tpl, ex.category, ex.word_list, i)
            order = rng.sample(unused, len(unused))
            # The naive draw first; then words of the same token length as the old word.
            tries = order[:1] + [w for w in order[1:] if ntok(w) == ntok(old)]
            found = None
            for k, new in enumerate(tries):
                words = ex.word_list[:i] + [new] + ex.word_list[i + 1:]
                span = aligned_span(tokenizer, tpl.render(ex.category, ex.word_list) + tpl.answer_prefix,
                                    tpl.render(ex.category, words) + tpl.answer_prefix, low_span,
                                    word_char_span(tpl, ex.category, words, i))
                if span is not None:
                    found = (new, words, span)
                    redrawn += k > 0
                    break
            if found is None:
                dropped += 1
                continue
            new, words, span = found
            low = low_row | {"template": tpl.name}
            high = _row(low_row, tpl, words, lex, f"{ex.id}+{i}")
            n_tokens = len(encode_with_offsets(tokenizer, low["prompt"] + tpl.answer_prefix)[0])
            pairs.append({"id": f"{ex.id}@{i}", "n_low": ex.answer, "n_high": ex.answer + 1,
                          "changed_index": i, "low_word": old, "high_word": new,
                          "token_span": list(span), "n_tokens": n_tokens, "tokenizer": tokenizer_name,
                          "low": low, "high": high})
            per_n[ex.answer] += 1
    short = None
    if len(pairs) < n:
        eligible = sum(1 for _, ex in examples if ex.answer < max_n)
        short = (f"{len(pairs)} of {n} pairs asked: {len(examples)} rows, of which {eligible} have a count below the "
                 f"maximum {max_n} (a row with the maximum count cannot be the low side of a pair), at most {cap} "
                 f"pairs per count to keep counts balanced, {dropped} candidates misaligned under the tokenizer, "
                 f"{skipped_label} rows with label errors")
    stats = {"pairs": len(pairs), "asked": n, "short_reason": short, "dropped_misaligned": dropped, "redrawn": redrawn,
             "skipped_label_errors": skipped_label, "by_n_low": {str(k): v for k, v in sorted(per_n.items())},
             "change_at": change_at, "tokenizer": tokenizer_name}
    return pairs, stats


def build_pairs(data: str | Path, tokenizer: Any, n: int, out: str | Path, **kwargs: Any) -> dict:
    """Write `n` minimal pairs to `out` (JSONL) under a tokenizer object (`countlens.build_pairs` also
    takes a model name or folder)."""
    kwargs.setdefault("tokenizer_name", getattr(tokenizer, "name_or_path", ""))
    pairs, stats = make_pairs(data, tokenizer, n, **kwargs)
    write_jsonl(out, pairs)
    return stats | {"out": str(out)}
