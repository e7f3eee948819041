"""Throughput of the counting benchmark on a local model, three ways, same examples, one run.

1. the original study's way: one prompt at a time, `model.generate`, parse the reply;
2. our batched generate (left padding, sorted by length, stop at end-of-turn): `countlens bench`;
3. our score mode: one forward pass per prompt, P(0..K) after the answer prefix.

Targets on 2 CPU cores: (2) >= 5x (1), (3) >= 20x (1). The table goes to stdout and, unless
--dry-run, into BENCHMARKS.md between markers (the rest of that file is kept).

    python benchmarks/bench_throughput.py                 # organism, 1,000 examples, 2 threads
    python benchmarks/bench_throughput.py --n 20 --dry-run --model /path/to/model
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_throughput:start -->", "<!-- bench_throughput:end -->"


def original_loop(handle, texts: list[str], max_new_tokens: int) -> list[str]:
    """As the original study: tokenize one prompt, generate, decode; no batching."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([handle.encode_text(text)], device=handle.device)
            gen = handle.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        eos_token_id=handle.stop_ids, pad_token_id=handle.pad_id)
            out.append(handle.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism", help="organism, a folder or hf:NAME")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data", help="JSONL (default: n fresh examples of the model's native template)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the targets are for 2 cores)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--dry-run", action="store_true", help="print the table only")
    args = ap.parse_args(argv)

    from countlens.backends import GenSettings
    from countlens.backends.hf import HFBackend
    from countlens.backends.spec import parse_spec
    from countlens.bench.data import BenchExample, load_examples
    from countlens.data.answers import parse_lenient
    from countlens.data.generate import generate_examples

    torch.set_num_threads(args.threads)
    backend = HFBackend(parse_spec(args.model), device="cpu", batch_size=args.batch_size)
    h = backend.handle
    if args.data:
        examples = load_examples(args.data, args.n)
    else:
        rows = generate_examples(args.n, args.seed, template=h.template())
        examples = [BenchExample(id=r["id"], prompt=r["prompt"], answer=r["answer"]) for r in rows]
    answers = [e.answer for e in examples]
    prompts = [e.prompt for e in examples]
    k_max = max(answers)
    settings = GenSettings(max_new_tokens=args.max_new_tokens)
    texts = [h.format(p) for p in prompts]

    # warm-up (first-call overheads are not throughput)
    original_loop(h, texts[:2], args.max_new_tokens)

    outs, t_orig = timed(lambda: original_loop(h, texts, args.max_new_tokens))
    acc_orig = sum(parse_lenient(o) == a for o, a in zip(outs, answers)) / len(answers)

    got: dict[int, str] = {}
    _, t_batch = timed(lambda: backend.generate(prompts, settings,
                                                lambda items: got.update({i: c.text for i, c in items})))
    acc_batch = sum(parse_lenient(got[i]) == a for i, a in enumerate(answers)) / len(answers)

    scored: dict[int, list[float]] = {}
    _, t_score = timed(lambda: backend.score(prompts, k_max, settings,
                                             lambda items: scored.update({i: s.logprobs for i, s in items})))
    acc_score = sum(max(range(k_max + 1), key=scored[i].__getitem__) == a for i, a in enumerate(answers)) / len(answers)

    n = len(examples)
    rows_md = [("original: one prompt at a time, generate", t_orig, acc_orig),
               (f"countlens bench: batched generate (batch {args.batch_size})", t_batch, acc_batch),
               ("countlens bench --mode score: one forward, P(0..K)", t_score, acc_score)]
    command = " ".join(["python benchmarks/bench_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"### Benchmark throughput: {args.model}, {n} examples",
             "",
             f"{dt.date.today().isoformat()} · {platform.machine()} · {os.cpu_count()} CPUs visible · "
             f"torch {torch.__version__} with {args.threads} threads · max_new_tokens {args.max_new_tokens} · "
             f"`{command}` (run it on an otherwise idle machine: other jobs on the same cores distort the ratios)",
             "",
             "| way | seconds | examples/s | speed-up vs original | accuracy |",
             "|---|---:|---:|---:|---:|"]
    for name, t, acc in rows_md:
        lines.append(f"| {name} | {t:.2f} | {n / t:.1f} | {t_orig / t:.1f}x | {acc:.1%} |")
    lines += ["", f"Targets on 2 CPU cores: batched >= 5x (got {t_orig / t_batch:.1f}x), "
                  f"score >= 20x (got {t_orig / t_score:.1f}x)."]
    table = "\n".join(lines)
    print(table)
    if not args.dry_run:
        path = Path(args.markdown)
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        block = f"{START}\n{table}\n{END}"
        if START in old and END in old:
            new = old[:old.index(START)] + block + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(new)
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
