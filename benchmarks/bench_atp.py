"""AtP vs exact activation patching over the same grid, side by side in one run.

    python benchmarks/bench_atp.py [--model organism] [--pairs 16] [--repeats 3]
                                   [--sites resid,attn,mlp,head] [--max-exact-cells 50000]
                                   [--out benchmarks/results/atp.json]

Both methods run the same pairs (correctness filter off, so both see every aligned pair) over the
grid sites x layers (x heads) x positions from each pair's changed word on (`positions=all`):
AtP in two forwards and one backward per batch (`countlens.interp.atp`), exact patching with its
fast KV-cached path (`countlens.interp.patching`). Times are medians of --repeats runs.

A grid of more than --max-exact-cells (pair x cell) patches is not run exactly: a random sample of
layers and of position offsets (the same cells for every pair) is, and its time is scaled up by
the ratio of the grid's patches to the sample's, linearly; the JSON says so (`exact_extrapolated`,
`exact_sampled_cells`, `exact_full_cells`). The fixed cost of the base and source forwards is
scaled with it, so the extrapolated exact time is, if anything, an overestimate of that part.

Any model `countlens.load` takes: the shipped organism (default) or `smollm2-135m` (30 layers).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def grid_cells(enc, n_configs_for, offsets: list[int] | None) -> int:
    """(pair x cell) patches of a grid: configs x positions from each pair's changed word on
    (offsets: only those offsets from the end)."""
    total = 0
    for low, start in zip(enc.low, enc.start):
        span = range(start - len(low), 0)  # offsets from the changed word to the answer
        total += n_configs_for * (len(span) if offsets is None else sum(1 for o in offsets if o in span))
    return total


def main() -> None:
    from countlens.data.generate import generate_dataset
    from countlens.data.pairs import build_pairs
    from countlens.interp.atp import AtPOptions, compare, run_atp
    from countlens.interp.patching import PatchOptions, encode_pairs, load_pairs, run_patching, sweep_configs
    from countlens.models.handle import load

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="organism")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sites", default="resid,attn,mlp,head")
    ap.add_argument("--template", default=None)
    ap.add_argument("--max-exact-cells", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "atp.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sites = tuple(s.strip() for s in args.sites.split(",") if s.strip())

    handle = load(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tpl = handle.template(args.template)
        generate_dataset(tmp / "d.jsonl", 400, seed=5, template=tpl)
        build_pairs(tmp / "d.jsonl", handle.tokenizer, args.pairs, tmp / "p.jsonl", template=tpl)
        pairs = load_pairs(tmp / "p.jsonl")
    enc = encode_pairs(handle, pairs, args.template)
    configs = sweep_configs(handle, sites)
    full = grid_cells(enc, len(configs), None)
    row: dict = {"model": args.model, "layers": handle.n_layers, "pairs": len(enc.ids), "sites": list(sites),
                 "configs": len(configs), "mean_tokens": sum(map(len, enc.low)) / max(1, len(enc.low)),
                 "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
                 "exact_full_cells": full}

    common = dict(sites=sites, filter="none", template=args.template)
    run_atp(handle, pairs[:2], AtPOptions(**common, positions="last"))  # warm up
    row["atp_s"], atp = timed(lambda: run_atp(handle, pairs, AtPOptions(**common, positions="all")), args.repeats)

    exact_opts = PatchOptions(**common, positions="all", n_boot=10)
    if full <= args.max_exact_cells:
        row["exact_extrapolated"] = False
        row["exact_sampled_cells"] = full
        row["exact_s"], exact = timed(lambda: run_patching(handle, pairs, exact_opts), args.repeats)
        comp = compare(atp.table, exact.table)
        row["spearman"] = {r.site: r.spearman for r in comp.itertuples()}
        row["spearman_cells"] = {r.site: r.spearman_cells for r in comp.itertuples()}
    else:
        rng = random.Random(args.seed)
        # offsets every batch has (its width is at least its shortest prompt), up to the longest span
        span = min(max(len(low) - start for low, start in zip(enc.low, enc.start)), min(map(len, enc.low)))
        frac = args.max_exact_cells / full
        layers = ["emb", *range(handle.n_layers)]
        k_layers = max(1, round(len(layers) * frac ** 0.5))
        keep_layers = tuple(sorted(rng.sample(layers, k_layers), key=lambda x: -1 if x == "emb" else x))
        k_pos = max(1, min(span, round(span * frac / (k_layers / len(layers)))))
        offsets = sorted(rng.sample(range(-span, 0), k_pos))
        sample_configs = sweep_configs(handle, sites, keep_layers)
        sampled = grid_cells(enc, len(sample_configs), offsets)
        opts = exact_opts.model_copy(update={"layers": keep_layers, "positions": ",".join(map(str, offsets))})
        t, _ = timed(lambda: run_patching(handle, pairs, opts), args.repeats)
        row.update(exact_extrapolated=True, exact_sampled_cells=sampled, exact_sample_s=t,
                   exact_sample_layers=[str(x) for x in keep_layers], exact_sample_offsets=offsets,
                   exact_s=t * full / max(1, sampled))
    row["speedup"] = row["exact_s"] / row["atp_s"]
    note = (f" (extrapolated from {row['exact_sampled_cells']} of {full} patches)" if row["exact_extrapolated"]
            else "")
    print(f"{args.model}: AtP {row['atp_s']:.2f} s, exact {row['exact_s']:.2f} s{note}: "
          f"AtP is {row['speedup']:.1f}x faster", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=2, default=str) + "\n")
    print(json.dumps(row, indent=2, default=str))


if __name__ == "__main__":
    main()
