"""The nnsight engine's cost next to the native engine's, side by side in one run.

    python benchmarks/bench_engines.py [--repeats 3] [--pairs 16] [--rows 60] [--out benchmarks/results/engines.json]

On the shipped organism and (when installed) SmolLM2-135M-Instruct: the residual patching sweep at
the last position (organism: every layer; SmolLM2: emb, 10, 20, 29), the steering sweep (organism:
every layer; SmolLM2: 10, 20; mean-diff + one-more + probe + random, scales 0, 1, 2) and the logit
lens (every layer), each with the native engine (its default fast path and
its reference path) and with `--engine nnsight` (in-process traces; the reference method, as a
remote run takes). Times are medians of `--repeats` runs, interleaved; ratios against native fast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each fn, the runs interleaved (a noisy machine shifts them all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, n_pairs: int, n_rows: int, repeats: int, layers: tuple | None = None) -> dict:
    from countlens import build_pairs
    from countlens.data.generate import generate_dataset
    from countlens.data.schema import read_examples
    from countlens.interp.acts import read_rows
    from countlens.interp.lens import run_lens
    from countlens.interp.patching import load_pairs, run_patching
    from countlens.interp.steering import run_steering
    from countlens.models.handle import load
    from countlens.options import LensOptions, PatchOptions, SteerOptions

    tmp = Path(tempfile.mkdtemp())
    generate_dataset(tmp / "d.jsonl", 300, seed=7)
    native, nn = load(name, device="cpu"), load(name, device="cpu", engine="nnsight")
    build_pairs(tmp / "d.jsonl", native.tokenizer, n_pairs, tmp / "p.jsonl")
    pairs = load_pairs(tmp / "p.jsonl")
    rows = [ex.row() for _, ex in read_examples(tmp / "d.jsonl")]
    by_n = [[r for r in rows if r["answer"] == k] for k in range(6)]
    rows = [g[i] for i in range(min(map(len, by_n))) for g in by_n][:n_rows]   # every count in both halves
    lens_rows = read_rows(tmp / "d.jsonl", 24, native=native.native_template)
    po = PatchOptions(positions="last", filter="none", n_boot=10, layers=layers)
    so = SteerOptions(scales=(0.0, 1.0, 2.0), generate=False, n_boot=10,
                      layers=None if layers is None else tuple(x for x in layers if x != "emb")[:2])
    lo = LensOptions(n_boot=10)
    out = {}
    for stage, fns in {
        "patch": {"native fast": lambda: run_patching(native, pairs, po),
                  "native reference": lambda: run_patching(native, pairs, po.model_copy(update={"method": "reference"})),
                  "nnsight": lambda: run_patching(nn, pairs, po)},
        "steer": {"native fast": lambda: run_steering(native, rows, so),
                  "native reference": lambda: run_steering(native, rows, so.model_copy(update={"method": "reference"})),
                  "nnsight": lambda: run_steering(nn, rows, so)},
        "lens": {"native": lambda: run_lens(native, lens_rows, lo), "nnsight": lambda: run_lens(nn, lens_rows, lo)},
    }.items():
        t = timed(fns, repeats)
        first = next(iter(t))
        out[stage] = {k: {"seconds": round(v, 3), "ratio": round(v / t[first], 2)} for k, v in t.items()}
        print(name, stage, out[stage], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/engines.json")
    a = ap.parse_args()
    from countlens.models.registry import NAMED, named_gguf

    res = {"organism": bench_model("organism", a.pairs, a.rows, a.repeats)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    if named_gguf(NAMED["smollm2-135m"]) is not None:
        res["smollm2-135m"] = bench_model("smollm2-135m", max(2, a.pairs // 4), a.rows // 2, a.repeats,
                                          layers=("emb", "10", "20", "29"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
