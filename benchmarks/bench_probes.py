"""Probe speed: activation capture against a bare forward, and fitting every layer's probes.

    python benchmarks/bench_probes.py [--examples 32] [--batch-size 8] [--fit-n 4000] [--fit-d 1536]
                                      [--fit-layers 28] [--out benchmarks/results/probes.json]
    python benchmarks/bench_probes.py --tiny      # seconds: checks that the script runs

1. Capture throughput: the same batches (left-padded, sorted by length) through
   (a) a bare forward (no hooks), (b) forward + capture hooks at every residual layer at the
   `last` and `items` positions, moved to CPU as float16 (no disk), and (c) the whole
   `collect_activations` into a fresh store on disk. Ratios are throughput / bare (target >= 0.8).
   Model: a random-weight model with Qwen 2.5 1.5B shapes (hidden 1536, 28 layers, 12 heads,
   2 KV heads, MLP 8960) and the real Qwen tokenizer from ../shared/fixtures, or `--model PATH`.
2. Probe fitting: random features (`--fit-n` examples x `--fit-d` dims x `--fit-layers` layers,
   labels from real generated examples) in a store; `run_probes` at the last position with
   5-fold CV, logistic + ridge only (no controls, no directions), BLAS limited to one thread per
   worker and workers over layers, timed after the worker pool has started (target <= 20 s for
   4000 x 1536 x 28 on 2 cores); then the
   same with every control. Beside it, one 6-class logistic fit with BLAS at 1 thread and at
   the default thread count (the contention the issue measured).
Times are medians of `--repeats` runs (capture) or single runs (fits), on this machine's CPUs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
QWEN_TOKENIZER = ROOT.parent / "shared" / "fixtures" / "qwen-tokenizer"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def qwen_shaped(tmp: Path, tiny: bool) -> str:
    """Random weights with Qwen 2.5 1.5B shapes (or a 2-layer miniature with --tiny)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if not QWEN_TOKENIZER.exists():
        raise SystemExit(f"the Qwen tokenizer is not at {QWEN_TOKENIZER}; pass --model PATH")
    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if tiny else \
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12)
    cfg = Qwen2Config(vocab_size=len(tok), num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **shape)
    path = tmp / "qwen-shaped"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def bench_capture(model_path: str, n: int, batch_size: int, repeats: int, tmp: Path) -> dict:
    from countlens.data.generate import generate_dataset
    from countlens.interp.acts import (_to_f16, batches, collect_activations, encode_batch, forward, locate,
                                       parse_sites, read_rows)
    from countlens.models.hooks import capture
    from countlens.models.handle import load

    handle = load(model_path)
    data = tmp / "capture.jsonl"
    generate_dataset(data, n, seed=3)
    rows = read_rows(data, native=handle.native_template)
    for r in rows:
        locate(handle, r, ["last", "items"])
    groups = [encode_batch(handle, g) for g in batches(rows, batch_size)]
    sites = parse_sites("resid", handle)

    def bare():
        for batch, _ in groups:
            forward(handle, batch)

    def hooked():
        for batch, pos in groups:
            with capture(handle, sites, positions=pos) as got:
                forward(handle, batch)
            for s in sites:
                _to_f16(got[s])

    k = [0]

    def to_disk():
        k[0] += 1
        collect_activations(handle, data, tmp / f"store{k[0]}", sites="resid", positions="last,items",
                            batch_size=batch_size, progress=False)

    bare()  # warm-up
    t_bare, t_hook, t_disk = timed(bare, repeats), timed(hooked, repeats), timed(to_disk, repeats)
    n_tokens = sum(len(r.tokens) for r in rows)
    return {"model": model_path, "device": str(handle.device), "examples": n, "batch_size": batch_size,
            "layers": handle.n_layers, "sites": len(sites), "tokens": n_tokens,
            "positions": sum(len(r.positions) for r in rows),
            "bare_s": round(t_bare, 3), "capture_s": round(t_hook, 3), "collect_to_disk_s": round(t_disk, 3),
            "bare_ex_per_s": round(n / t_bare, 2), "capture_ex_per_s": round(n / t_hook, 2),
            "collect_ex_per_s": round(n / t_disk, 2),
            "capture_ratio": round(t_bare / t_hook, 3), "collect_ratio": round(t_bare / t_disk, 3)}


def one_logistic(n: int, d: int, threads: int | None) -> float:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, 6, n)
    with threadpool_limits(limits=threads):
        t = time.perf_counter()
        LogisticRegression(max_iter=300).fit(x, y)
        return time.perf_counter() - t


def bench_fit(n: int, d: int, layers: int, tmp: Path, n_jobs: int | None) -> dict:
    from countlens.interp.probes import cpu_count, run_probes
    from countlens.interp.synthetic import synthetic_store

    t = time.perf_counter()
    synthetic_store(tmp / "fit", n=n, d=d, n_layers=layers - 1, planted={}, positions=("last",), seed=0)
    t_store = time.perf_counter() - t  # layers - 1 blocks + emb = `layers` probed layers
    kw = dict(positions="last", n_boot=1000, n_jobs=n_jobs, progress=False)
    t = time.perf_counter()
    run_probes(tmp / "fit", controls=(), save_directions=False, **{**kw, "n": 50})  # starts the worker pool
    t_pool = time.perf_counter() - t
    t = time.perf_counter()
    run_probes(tmp / "fit", controls=(), save_directions=False, **kw)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    run_probes(tmp / "fit", **kw)
    t_all = time.perf_counter() - t
    return {"examples": n, "dims": d, "layers": layers, "folds": 5, "cpus": cpu_count(),
            "n_jobs": n_jobs or cpu_count(), "store_write_s": round(t_store, 2),
            "worker_pool_start_s": round(t_pool, 2),
            "logistic_ridge_cv_s": round(t_plain, 2), "target_s": 20.0,
            "with_controls_and_directions_s": round(t_all, 2),
            "one_logistic_blas1_s": round(one_logistic(n, d, 1), 3),
            "one_logistic_blas_default_s": round(one_logistic(n, d, None), 3)}


def markdown(cap: dict | None, fit: dict) -> str:
    lines = ["| measurement | value | target |", "|---|---|---|"]
    if cap:
        lines += [f"| capture, {cap['layers'] + 1} resid layers x last+items ({cap['examples']} ex, batch "
                  f"{cap['batch_size']}, {cap['device']}) | {cap['capture_ex_per_s']} ex/s vs bare "
                  f"{cap['bare_ex_per_s']} ex/s = **{cap['capture_ratio']}x** | >= 0.8x |",
                  f"| collect_activations to disk (same batches) | {cap['collect_ex_per_s']} ex/s = "
                  f"**{cap['collect_ratio']}x** bare | >= 0.8x |"]
    lines += [f"| fit logistic + ridge, 5-fold CV, {fit['examples']} x {fit['dims']} x {fit['layers']} layers, "
              f"{fit['n_jobs']} workers (pool started: {fit['worker_pool_start_s']} s before) | "
              f"**{fit['logistic_ridge_cv_s']} s** | <= 20 s |",
              f"| same with control task, shuffled labels, majority, input BoW, directions | "
              f"{fit['with_controls_and_directions_s']} s | - |",
              f"| one 6-class logistic fit, BLAS 1 thread / default threads | {fit['one_logistic_blas1_s']} s / "
              f"{fit['one_logistic_blas_default_s']} s | - |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model folder (default: random weights with Qwen 2.5 1.5B shapes)")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fit-n", type=int, default=4000)
    ap.add_argument("--fit-d", type=int, default=1536)
    ap.add_argument("--fit-layers", type=int, default=28)
    ap.add_argument("--n-jobs", type=int, default=None)
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="miniature sizes: checks that the script runs")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.tiny:
        args.examples, args.batch_size, args.repeats = 8, 4, 1
        args.fit_n, args.fit_d, args.fit_layers = 200, 16, 3
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cap = None
        if not args.skip_capture:
            model = args.model or qwen_shaped(tmp, args.tiny)
            print(f"capture: {model}", file=sys.stderr)
            cap = bench_capture(model, args.examples, args.batch_size, args.repeats, tmp)
        print("fitting probes", file=sys.stderr)
        fit = bench_fit(args.fit_n, args.fit_d, args.fit_layers, tmp, args.n_jobs)
    result = {"capture": cap, "fit": fit, "torch_threads": torch.get_num_threads()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(cap, fit))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
