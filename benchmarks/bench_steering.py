"""Steering sweep speed at the answer position, side by side in one run: fast (KV-cached) vs reference.

    python benchmarks/bench_steering.py [--model organism] [--n 200] [--layers emb,0,1] [--scales 1,2]
                                        [--repeats 3] [--batch-size 64] [--memory-budget BYTES]
                                        [--out benchmarks/results/steering.json]
    python benchmarks/bench_steering.py --model smollm2-135m --device cuda --dtype bfloat16

Both methods sweep the same held-out examples over the same layers x vectors x scales with
positions "last" (vectors fitted once, outside the timing, from the first half of `--n`
generated examples). reference: a full forward per (setting, batch). fast: one forward per
batch, then every non-zero setting recomputes only the last token over copies of that batch's
KV cache, settings batched as rows under `--memory-budget`. Times are medians of `--repeats`
runs (after one warm-up sweep each); `fast_vs_reference` = reference_s / fast_s. The two
results are compared too (max |log-prob difference|, answers that differ).
`--model` is passed to `countlens.models.handle.load` as is (organism, a folder, a registry name).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main(argv: list[str] | None = None) -> dict:
    from countlens.data.generate import generate_examples
    from countlens.interp.steering import DEFAULT_SCALES, VECTORS, SteerOptions, prepare_sweep, sweep
    from countlens.models.handle import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=200,
                    help="generated examples (the first half fits vectors, the second is swept)")
    ap.add_argument("--layers", default=None, help="comma list, e.g. emb,0,2 (default: emb and every block)")
    ap.add_argument("--scales", default=",".join(str(s) for s in DEFAULT_SCALES))
    ap.add_argument("--vectors", default=",".join(VECTORS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-budget", type=int, default=SteerOptions().memory_budget)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-repeats", type=int, default=None, help="default: --repeats")
    ap.add_argument("--template", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "steering.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    handle = load(args.model, device=args.device, dtype=args.dtype)
    tpl = handle.template(args.template)
    # two halves, each balanced over counts, so that the training half has every class
    rows = (generate_examples(args.n - args.n // 2, args.seed, template=tpl)
            + generate_examples(args.n // 2, args.seed + 1, template=tpl))
    layers = tuple(x.strip() for x in args.layers.split(",")) if args.layers else None
    opts = SteerOptions(layers=layers, scales=tuple(float(s) for s in args.scales.split(",")),
                        vectors=tuple(v.strip() for v in args.vectors.split(",")), positions="last",
                        batch_size=args.batch_size, memory_budget=args.memory_budget, generate=False,
                        template=args.template, seed=args.seed)
    inp = prepare_sweep(handle, rows, opts)
    fast_opts, ref_opts = (opts.model_copy(update={"method": m}) for m in ("fast", "reference"))

    def run(o):
        with torch.no_grad():
            return sweep(handle, inp, o)

    run(fast_opts)  # warm-up (allocator, kernels), not timed
    run(ref_opts)
    fast_s, fast_all, (fb, fast) = timed(lambda: run(fast_opts), args.repeats)
    ref_s, ref_all, (rb, ref) = timed(lambda: run(ref_opts), args.reference_repeats or args.repeats)
    diff = max(float((fast[k] - ref[k]).abs().max()) for k in ref)
    flips = sum(int((fast[k].argmax(-1) != ref[k].argmax(-1)).sum()) for k in ref)
    n_eval = len(inp.eval_idx)
    n_steered = sum(1 for *_, s in inp.settings if s != 0.0)
    widths = [max(len(inp.test.ids[i]) for i in c) for c in inp.chunks]
    row = {
        "model": args.model, "device": str(handle.device), "dtype": str(next(handle.model.parameters()).dtype),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "n_layers": handle.n_layers,
        "layers": [str(x) for x in inp.layers], "vectors": list(opts.vectors), "scales": list(opts.scales),
        "n_eval": n_eval, "batches": len(inp.chunks), "batch_size": opts.batch_size,
        "mean_width": sum(widths) / len(widths), "settings": len(inp.settings), "steered_settings": n_steered,
        "memory_budget": opts.memory_budget, "repeats": args.repeats,
        "fast_s": fast_s, "reference_s": ref_s, "fast_runs_s": fast_all, "reference_runs_s": ref_all,
        "fast_vs_reference": ref_s / fast_s,
        "fast_ms_per_setting_example": 1000 * fast_s / max(1, n_steered * n_eval),
        "reference_ms_per_setting_example": 1000 * ref_s / max(1, n_steered * n_eval),
        "max_abs_logprob_diff": diff, "answers_that_differ": flips,
        "base_identical": bool(torch.equal(fb, rb)),
    }
    print(json.dumps(row), file=sys.stderr)
    print(f"{args.model}: {n_steered} steered settings x {n_eval} examples: fast {fast_s:.3f} s, reference "
          f"{ref_s:.3f} s, fast x{row['fast_vs_reference']:.1f} (max |d log p| {diff:.2e}, {flips} answers differ)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    return row


if __name__ == "__main__":
    main()
