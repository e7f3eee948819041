"""Patching speed, side by side in one run: the original protocol, reference, fast, TransformerLens.

    python benchmarks/bench_patching.py [--repeats 3] [--pairs 16] [--qwen-pairs 4] [--out benchmarks/results/patching.json]

Models: the shipped organism (4 layers) and a random-weight model with Qwen 2.5 1.5B shapes
(hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960) with the real Qwen tokenizer from
../shared/fixtures (skipped when absent). Each method runs the same pairs; times are medians
of `--repeats` runs; ratios are against the reference path (a full forward per layer).

The original protocol: batch size 1, for every layer a `generate()` with the high prompt's
block output patched in at the last position (off-by-one corrected), answer parsed.
TransformerLens 4: TransformerBridge + patching.get_act_patch_resid_pre (only if importable;
install the `bench` extra in a separate venv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def original_protocol(handle, enc, max_new_tokens: int = 8) -> None:
    """Batch 1, one generate() per layer, hook on the block output at the last position."""
    from countlens.models.hooks import capture, replace
    from countlens.sites import Site

    for i in range(len(enc.ids)):
        low = torch.tensor([enc.low[i]], device=handle.device)
        high = torch.tensor([enc.high[i]], device=handle.device)
        sites = [Site("resid", "emb")] + [Site("resid", L) for L in range(handle.n_layers)]
        with torch.no_grad(), capture(handle, sites) as acts:
            handle.model(high)
        for site in sites:
            v = acts[site][:, -1]

            with torch.no_grad(), replace(handle, site, v, positions=-1, prompt_only=True):
                handle.model.generate(low, attention_mask=torch.ones_like(low), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=handle.stop_ids, pad_token_id=handle.pad_id)


def ours(handle, pairs, method: str, positions: str = "last", batch_size: int = 32) -> None:
    from countlens.interp.patching import PatchOptions, run_patching

    run_patching(handle, pairs, PatchOptions(sites=("resid",), positions=positions, method=method, filter="none",
                                             batch_size=batch_size, n_boot=10))


def transformer_lens_sweep(handle, enc) -> None | str:
    """TransformerLens 4: TransformerBridge + patching.get_act_patch_resid_pre at the last position.

    resid_pre of layer L+1 is our resid L; restricted to the last position with index_df, as ours.
    """
    try:
        import pandas as pd
        from transformer_lens import patching
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as e:  # noqa: BLE001
        return f"not installed ({type(e).__name__})"
    bridge = getattr(handle, "_tl_bridge", None)
    if bridge is None:
        bridge = TransformerBridge.boot_transformers(handle.path, hf_model=handle.model, tokenizer=handle.tokenizer,
                                                     device="cpu", dtype=torch.float32)
        bridge.enable_compatibility_mode()
        handle._tl_bridge = bridge
    for i in range(len(enc.ids)):
        low = torch.tensor([enc.low[i]])
        high = torch.tensor([enc.high[i]])
        _, cache = bridge.run_with_cache(high)
        hi, lo = enc.tok_high[i], enc.tok_low[i]

        def metric(logits, hi=hi, lo=lo):
            return logits[0, -1, hi] - logits[0, -1, lo]
        index = pd.DataFrame({"layer": range(handle.n_layers), "pos": [low.shape[1] - 1] * handle.n_layers})
        patching.get_act_patch_resid_pre(bridge, low, cache, metric, index_axis_names=None, index_df=index)
    return None


def qwen_shaped(tmp: Path) -> str | None:
    if not QWEN_TOKENIZER.exists():
        return None
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(tmp / "qwen-1.5b-shaped")
    tok.save_pretrained(tmp / "qwen-1.5b-shaped")
    return str(tmp / "qwen-1.5b-shaped")


def bench_model(path: str, n_pairs: int, repeats: int, grid: bool, tmp: Path, template: str | None) -> dict:
    from countlens.data.generate import generate_dataset
    from countlens.data.pairs import build_pairs
    from countlens.interp.patching import encode_pairs, load_pairs
    from countlens.models.handle import load

    handle = load(path, device="cpu")
    tpl = handle.template(template)
    data = tmp / "d.jsonl"
    generate_dataset(data, 400, seed=5, template=tpl)
    build_pairs(data, handle.tokenizer, n_pairs, tmp / "p.jsonl", template=tpl)
    pairs = load_pairs(tmp / "p.jsonl")
    enc = encode_pairs(handle, pairs, template)
    L = handle.n_layers
    row = {"model": Path(path).name, "layers": L, "pairs": len(pairs),
           "mean_tokens": sum(map(len, enc.low)) / len(enc.low), "repeats": repeats}
    ours(handle, pairs[:2], "fast")  # warm up
    repeats = repeats if L <= 8 else 1  # a 28-layer forward takes seconds on 2 cores
    row["repeats"] = repeats
    row["reference_s"] = timed(lambda: ours(handle, pairs, "reference"), repeats)
    row["fast_s"] = timed(lambda: ours(handle, pairs, "fast"), repeats)
    row["original_s"] = timed(lambda: original_protocol(handle, enc), 1 if L > 8 else repeats)
    if grid:
        row["grid_reference_s"] = timed(lambda: ours(handle, pairs, "reference", "all"), repeats)
        row["grid_fast_s"] = timed(lambda: ours(handle, pairs, "fast", "all"), repeats)
    # TransformerLens last: its bridge wraps the HF modules, so it gets its own copy of the model.
    tl_handle = load(path, device="cpu")
    try:
        msg = transformer_lens_sweep(tl_handle, type(enc)(*[getattr(enc, f)[:1] for f in
                                                          ("ids", "n_low", "low", "high", "start", "tok_low",
                                                           "tok_high")]))
        row["transformer_lens_s"] = None if msg else timed(lambda: transformer_lens_sweep(tl_handle, enc), repeats)
        row["transformer_lens_note"] = msg or "TransformerBridge + patching.get_act_patch_resid_pre (last position)"
    except Exception as e:  # noqa: BLE001
        row["transformer_lens_s"], row["transformer_lens_note"] = None, f"failed: {type(e).__name__}: {e}"[:200]
    row["target_last"] = 0.8 * (L + 1) / 2
    row["fast_vs_reference"] = row["reference_s"] / row["fast_s"]
    row["fast_vs_original"] = row["original_s"] / row["fast_s"]
    row["original_ms_per_pair"] = 1000 * row["original_s"] / len(pairs)
    row["fast_ms_per_pair"] = 1000 * row["fast_s"] / len(pairs)
    if row.get("transformer_lens_s"):
        row["fast_vs_transformer_lens"] = row["transformer_lens_s"] / row["fast_s"]
    if grid:
        row["grid_fast_vs_reference"] = row["grid_reference_s"] / row["grid_fast_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--qwen-pairs", type=int, default=4)
    ap.add_argument("--skip-qwen", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "patching.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "org").mkdir()
        rows.append(bench_model("organism", args.pairs, args.repeats, True, tmp / "org", None))
        print(json.dumps(rows[-1]), file=sys.stderr)
        if not args.skip_qwen:
            q = qwen_shaped(tmp)
            if q:
                (tmp / "q").mkdir()
                rows.append(bench_model(q, args.qwen_pairs, args.repeats, False, tmp / "q", "seed-v1"))
                print(json.dumps(rows[-1]), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": 2, "rows": rows}, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
