"""Speed on a real pretrained model, side by side in one run (default: SmolLM2-135M-Instruct).

    python benchmarks/bench_real.py [--model smollm2-135m] [--pairs 4] [--n 64] [--repeats 3]
                                    [--out benchmarks/results/real.json]

Three comparisons, each pair of ways timed on the same inputs, medians of `--repeats`:
  patch   residual sweep at the answer position (every layer + emb): fast (KV reuse) vs reference
          (a full forward per layer); target >= 0.8 x (L+1)/2.
  score   score mode (one batched forward, P(0..K)) vs the one-prompt-at-a-time generate loop
          (batch 1, greedy, 8 new tokens, as the original study ran); target >= 10x.
  capture activation capture (every residual layer at the last position and every list word,
          into the float16 store) vs a bare batched forward of the same prompts; target >= 0.8x.
Steering has its own script (benchmarks/bench_steering.py). Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    from countlens.data.generate import generate_dataset
    from countlens.data.pairs import build_pairs
    from countlens.data.schema import read_examples
    from countlens.interp.acts import collect_activations
    from countlens.interp.patching import PatchOptions, load_pairs, run_patching
    from countlens.models.generation import answer_logprobs
    from countlens.models.handle import load, pad_left

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    h = load(a.model)
    tmp = Path(tempfile.mkdtemp())
    tpl = h.template()
    generate_dataset(tmp / "d.jsonl", max(a.n, 300), seed=5, template=tpl)
    build_pairs(tmp / "d.jsonl", h.tokenizer, a.pairs, tmp / "p.jsonl", template=tpl)
    pairs = load_pairs(tmp / "p.jsonl")
    rows = [ex.row() for _, ex in read_examples(tmp / "d.jsonl", a.n)]
    texts = [h.format(r["prompt"]) + tpl.answer_prefix for r in rows]
    res: dict = {"model": a.model, "n_layers": h.n_layers, "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                 "mean_prompt_tokens": sum(len(h.encode_text(t)) for t in texts) / len(texts)}

    # patch: residual stream, every layer, answer position
    def patch(method):
        return lambda: run_patching(h, pairs, PatchOptions(sites=("resid",), positions="last", method=method,
                                                           filter="none"))
    fast = timed(patch("fast"), a.repeats)
    ref = timed(patch("reference"), max(1, a.repeats - 2))
    res["patch"] = {"pairs": len(pairs), "fast_s": fast, "reference_s": ref, "ratio": ref / fast,
                    "target": 0.8 * (h.n_layers + 1) / 2}

    # score mode vs the one-at-a-time generate loop
    answers = h.answer_tokens(5, tpl.answer_prefix)
    score = timed(lambda: answer_logprobs(h, texts, answers, 64), a.repeats)

    @torch.no_grad()
    def one_at_a_time():
        for t in texts:
            ids = torch.tensor([h.encode_text(t)], device=h.device)
            h.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, pad_token_id=h.pad_id, eos_token_id=h.stop_ids)
    loop = timed(one_at_a_time, 1)
    res["score"] = {"n": len(texts), "score_s": score, "generate_loop_s": loop, "ratio": loop / score, "target": 10}

    # capture vs bare forward
    @torch.no_grad()
    def bare():
        for i in range(0, len(texts), 16):
            batch = pad_left([h.encode_text(t) for t in texts[i:i + 16]], h.pad_id, h.device)
            h.model(**batch, logits_to_keep=1)

    def capture():
        d = tmp / "acts"
        shutil.rmtree(d, ignore_errors=True)
        collect_activations(h, rows, d, sites="resid", positions=("last", "items"), batch_size=16, progress=False)
    fwd = timed(bare, a.repeats)
    cap = timed(capture, a.repeats)
    res["capture"] = {"n": len(texts), "bare_forward_s": fwd, "capture_s": cap, "ratio": fwd / cap, "target": 0.8}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
