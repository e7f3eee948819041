"""Logit lens and direct logit attribution: exact against the model's own logits on every architecture,
and right on planted models whose count is written at a known layer by a known head.

The tiny random models get their weights perturbed (std 0.3, biases and norm gains included) so that
logits are large enough for 1e-5 / 1e-4 checks to mean something and for Gemma 2's soft-cap to bite.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from countlens.errors import InputError
from countlens.data.generate import generate_dataset, generate_examples
from countlens.data.lexicon import load_lexicon
from countlens.interp.acts import read_rows
from countlens.interp.directions import Directions
from countlens.interp.dla import DLAOptions, DLAResult, run_dla
from countlens.interp.lens import (LensOptions, LensResult, Readout, count_token_ids, lens_logits,
                                   readout_directions, run_lens)
from countlens.models.encoding import encode_prompt
from countlens.models.handle import load
from countlens.models.organism.tokenizer import build_tokenizer
from countlens.report.dla_figures import dla_figures
from countlens.report.lens_figures import lens_figures

K = 5                       # counts 0..5 (the generator's default max_count)
C_, A_, B_, Q_ = 0, 1, 2, 3  # planted features: constant, fruit word, BOS (the sink), answer prefix "("
DIGIT0 = 4                  # residual dims 4..4+K carry the digits' unembedding rows


def _perturbed(path: str, std: float = 0.3):
    handle = load(path, device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in handle.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return handle


def _rows(handle, n: int = 8, seed: int = 3, **kw):
    return read_rows(generate_examples(n, seed, **kw), native=handle.native_template)


@torch.no_grad()
def _own(handle, tokens: list[int]) -> torch.Tensor:
    """Full-vocabulary logits [T, V] of one unpadded prompt, straight from the model."""
    return handle.model(torch.tensor([tokens])).logits[0].double()


def _metric(logits: torch.Tensor, answer: int) -> float:
    return float(logits[answer] - (logits.sum() - logits[answer]) / (len(logits) - 1))


# ------------------------------------------------------------------------------------- every arch

@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "neox"])
def test_the_lens_is_the_models_own_readout_at_every_layer(arch, tiny_models, tiny_arch_models):
    """The last layer's lens == the model's own count logits (1e-5), at the answer and at every word;
    earlier layers == HF's hidden_states[L + 1] through the final norm, unembedding and soft-cap."""
    handle = _perturbed({**tiny_models, **tiny_arch_models}[arch])
    rows = _rows(handle)
    ll = lens_logits(handle, rows, k_max=K, batch_size=3)   # batches of 3: left padding is exercised
    readout = Readout.of(handle)
    capped = 0.0
    with torch.no_grad():
        for i, r in enumerate(ll.rows):
            ids = count_token_ids(handle, [r.template.answer_prefix], K)[0]
            toks = [t for _, _, t in r.positions]
            assert ll.rows[i].positions[0][0] == "last" and len(toks) == 1 + len(r.words)
            out = handle.model(torch.tensor([r.tokens]), output_hidden_states=True)
            own = out.logits[0][toks][:, ids].double()
            np.testing.assert_allclose(ll.logits[i][-1], own.numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(ll.own[i], own[0].numpy(), atol=1e-5, rtol=0)
            for layer in range(handle.n_layers):  # hidden_states[0] = emb, [l + 1] = block l (not the last)
                h = readout.norm(out.hidden_states[layer][0][toks]).double()
                z = h @ readout.weight[ids].double().T
                if readout.bias is not None:
                    z = z + readout.bias[ids].double()
                np.testing.assert_allclose(ll.logits[i][layer], readout.cap(z).numpy(), atol=1e-5, rtol=0)
                capped = max(capped, float((readout.cap(z) - z).abs().max()))
            assert np.array_equal(ll.truth[i], [r.answer, *np.cumsum(r.match)])
    if arch == "gemma2":
        assert readout.softcap == 5.0 and capped > 0.1  # without the cap the 1e-5 checks above would fail
    res = run_lens(handle, rows, LensOptions(k_max=K, n_boot=50))
    assert res.summary["last_layer_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "neox", "mistral", "gemma3", "phi3"])
def test_attribution_terms_sum_to_the_models_own_metric(arch, tiny_models, tiny_arch_models):
    handle = _perturbed({**tiny_models, **tiny_arch_models}[arch])
    rows = _rows(handle)
    res = run_dla(handle, rows, DLAOptions(k_max=K, batch_size=3, n_boot=50))
    t = res.table
    own = []
    for r in rows:
        enc = encode_prompt(handle, r.template, r.category, r.words)
        ids = count_token_ids(handle, [r.template.answer_prefix], K)[0]
        own.append(_metric(_own(handle, enc.ids)[enc.answer, ids], r.answer))
    own_mean = float(np.mean(own))
    assert np.mean(np.abs(own)) > 0.1  # a metric of ~0 would make the sums below vacuous
    assert abs(t["mean"].sum() - own_mean) < 1e-4
    assert res.summary["max_abs_sum_error"] < 1e-4          # row by row, against the same forward's logits
    assert abs(res.summary["total"]["mean"] - own_mean) < 1e-4
    n_heads = handle.model.config.num_attention_heads
    assert (t.kind == "head").sum() == handle.n_layers * n_heads and (t.kind == "mlp").sum() == handle.n_layers
    rem = t[t.kind == "remainder"].set_index("component")["mean"]
    # heads + bias explain the attention output, attention + MLP the block: nothing left but rounding
    assert all(abs(rem[f"remainder: {w}.{layer}"]) < 1e-5
               for w in ("attn", "block") for layer in range(handle.n_layers))
    biased = arch in ("gpt2", "neox")
    biases = {"attn bias", "final norm bias"} if biased else set()
    assert set(t.kind) - {"remainder"} == {"emb", "head", "mlp"} | biases
    if biased:
        assert t[t.kind.isin(["attn bias", "final norm bias"])]["mean"].abs().min() > 1e-3
    if arch == "gemma2":  # the cap's effect is a term of its own, and a real one
        assert abs(rem["remainder: final logit soft-cap"]) > 1e-2
    else:
        assert "remainder: final logit soft-cap" not in rem


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_attribution_from_the_lens_forwards_equals_its_own_run(arch, tiny_models, tiny_arch_models):
    """The study runs DLA on the logit lens's forwards (`run_lens(..., also=Attribution)`): other
    batches, other captured positions, the same numbers as `run_dla` with forwards of its own."""
    from countlens.interp.dla import Attribution
    from countlens.interp.lens import LensOptions, run_lens

    handle = _perturbed({**tiny_models, **tiny_arch_models}[arch])
    rows = _rows(handle)
    alone = run_dla(handle, rows, DLAOptions(k_max=K, batch_size=3, n_boot=50))
    acc = Attribution(handle, rows, DLAOptions(k_max=K, n_boot=50))
    lens = run_lens(handle, rows, LensOptions(k_max=K, batch_size=4), also=acc)
    shared = acc.result()
    assert np.abs(shared.table["mean"].to_numpy() - alone.table["mean"].to_numpy()).max() < 1e-5
    assert list(shared.table.component) == list(alone.table.component)
    assert shared.summary["max_abs_sum_error"] < 1e-4 and abs(shared.table["mean"]).max() > 1e-2
    assert lens.table.equals(run_lens(handle, rows, LensOptions(k_max=K, batch_size=4)).table)


# ------------------------------------------------------------------------------------ the organism

@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


def test_on_the_organism_the_last_layer_lens_is_the_models_accuracy(organism, tmp_path):
    generate_dataset(tmp_path / "data.jsonl", 60, seed=0)
    rows = read_rows(tmp_path / "data.jsonl", native=organism.native_template)
    res = run_lens(organism, rows, LensOptions(positions=("answer",), n_boot=100))
    greedy = []
    for r in rows:  # the model's own greedy answer token over the full vocabulary
        enc = encode_prompt(organism, r.template, r.category, r.words)
        ids = count_token_ids(organism, [r.template.answer_prefix], K)[0]
        greedy.append(int(_own(organism, enc.ids)[enc.answer].argmax()) == int(ids[r.answer]))
    per_layer = res.summary["per_layer"]
    assert [e["layer"] for e in per_layer] == ["emb", 0, 1, 2, 3]
    assert per_layer[-1]["accuracy"] == pytest.approx(np.mean(greedy), abs=1e-6) and np.mean(greedy) >= 0.95
    assert res.summary["own"]["accuracy"] == per_layer[-1]["accuracy"]
    assert per_layer[0]["accuracy"] <= 0.3  # the embedding of "(" is the same in every row
    assert res.summary["first_layer_90"] == 3


# ---------------------------------------------------------------------------------- planted models

def planted_model(path: Path, layer: int = 1, head: int = 2, n_layers: int = 3, score: float = 12.0,
                  gain: float = 10.0) -> str:
    """A Llama whose head (layer, head) counts the fruit words and writes the count's logits.

    Embeddings are one-hot features (constant, fruit, BOS, "("); the digits' unembedding rows are
    the residual dims 4..9. The head's query at "(" attends to BOS with score `score` and to every
    other token with 0 (RoPE's angles vanish with rope_theta 1e12), so its value "fruit" sums to
    count / Z and its value "BOS" to e^score / Z: the output projection writes
    gain * e^score / Z * (count * a + b), a = 2d and b = -d^2 on digit d, whose argmax over d is the
    count. Blocks before `layer` write nothing; the other heads and later blocks keep their random
    (small) weights."""
    tok = build_tokenizer()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=8, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e12}, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    vocab = tok.get_vocab()
    fruits = [vocab[w] for w in load_lexicon("clean-v1").categories["fruit"]]
    digits = [vocab[str(d)] for d in range(K + 1)]
    feat = 4.0  # a feature after the input RMSNorm: e_C + e_f has rms 1/4 in 32 dims
    hd = slice(8 * head, 8 * head + 8)
    with torch.no_grad():
        E = model.model.embed_tokens.weight
        E.zero_()
        E[:, C_] = 1.0
        E[fruits, A_] = 1.0
        E[tok.bos_token_id, B_] = 1.0
        E[vocab["("], Q_] = 1.0
        U = model.lm_head.weight
        U[digits] = 0.0
        for d, t in enumerate(digits):
            U[t, DIGIT0 + d] = 1.0
        for b in model.model.layers[:layer]:
            b.self_attn.o_proj.weight.zero_()
            b.mlp.down_proj.weight.zero_()
        at = model.model.layers[layer].self_attn
        for w in (at.q_proj.weight, at.k_proj.weight, at.v_proj.weight):
            w[hd] = 0.0
        at.q_proj.weight[8 * head + 3, Q_] = score * math.sqrt(8) / feat ** 2   # the lowest RoPE frequency pair
        at.k_proj.weight[8 * head + 3, B_] = 1.0
        at.v_proj.weight[8 * head + 0, A_] = 1.0
        at.v_proj.weight[8 * head + 1, B_] = 1.0
        d = torch.arange(K + 1, dtype=torch.float32)
        a, b = torch.zeros(32), torch.zeros(32)
        a[DIGIT0:DIGIT0 + K + 1], b[DIGIT0:DIGIT0 + K + 1] = 2 * d, -d * d
        at.o_proj.weight[:, hd] = 0.0
        at.o_proj.weight[:, 8 * head + 0] = gain * math.exp(score) / feat * a
        at.o_proj.weight[:, 8 * head + 1] = gain / feat * b
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (Path(path) / "countlens.json").write_text(json.dumps({"template": "seed-v1"}))
    return str(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    handle = load(planted_model(tmp_path_factory.mktemp("planted")), device="cpu")
    return handle, _rows(handle, 60, 0, categories=["fruit"])


def test_the_lens_reads_the_count_from_the_planted_layer_on_and_not_before(planted):
    handle, rows = planted
    res = run_lens(handle, rows, LensOptions(n_boot=100))
    acc = {e["layer"]: e["accuracy"] for e in res.summary["per_layer"]}
    assert acc["emb"] <= 0.3 and acc[0] <= 0.3      # before block 1 nothing depends on the count
    assert acc[1] >= 0.95 and acc[2] >= 0.95
    assert res.summary["first_layer_90"] == 1
    rank = res.table[(res.table.position == "answer") & (res.table.metric == "rank")].set_index("layer")["value"]
    assert rank["emb"] == pytest.approx((K + 2) / 2)  # every count token tied: the mean rank, not 1
    assert rank["1"] <= 1.05


@pytest.mark.parametrize("layer,head", [(1, 2), (2, 0)])
def test_attribution_ranks_the_planted_head_first(layer, head, tmp_path):
    handle = load(planted_model(tmp_path / "m", layer=layer, head=head), device="cpu")
    rows = _rows(handle, 30, 1, categories=["fruit"])
    res = run_dla(handle, rows, DLAOptions(n_boot=100))
    t = res.table.sort_values("mean", ascending=False)
    assert t.iloc[0]["component"] == f"head.{layer}.{head}"
    assert res.summary["top_heads"][0]["component"] == f"head.{layer}.{head}"
    top = t.iloc[0]["mean"]
    assert top >= 0.99 * res.summary["total"]["mean"] > 0.5
    assert t.iloc[1:]["mean"].abs().max() < 0.01 * top


def test_direction_alignment_folds_the_final_norm_gain(planted, tiny_models):
    handle, _ = planted
    with torch.no_grad():
        handle.model.model.norm.weight[DIGIT0:DIGIT0 + K + 1] = torch.arange(1, K + 2, dtype=torch.float32)
    try:
        U = readout_directions(handle, K).numpy()
        assert np.allclose(U[:, DIGIT0:DIGIT0 + K + 1], np.diag(np.arange(1.0, K + 2)))
        # class mean of count c = e_(digit c): each N -> N+1 difference is e_(N+1) - e_N
        means = np.zeros((1, K + 1, 32), dtype=np.float32)
        means[0, np.arange(K + 1), DIGIT0 + np.arange(K + 1)] = 1.0
        dirs = Directions("resid", "last", [1], {"classes": np.arange(K + 1), "counts": np.full(K + 1, 10),
                                                 "means": means, "slope": means[:, 1] - means[:, 0]})
        rows = _rows(handle, 12, 0, categories=["fruit"])
        res = run_lens(handle, rows, LensOptions(positions=("answer",), n_boot=50), directions=dirs)
        al = res.alignment.set_index(["direction", "readout"])["cosine"]
        for n in range(K):  # readout step (n + 2) e_(n+1) - (n + 1) e_n; no gain folding would give 1.0
            want = (2 * n + 3) / (math.sqrt(2) * math.hypot(n + 2, n + 1))
            assert al[(f"mean-diff {n}->{n + 1}", f"digit {n + 1} - digit {n}")] == pytest.approx(want, abs=1e-6)
            assert al[(f"mean-diff {n}->{n + 1}", f"digit {n + 1}")] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
        assert al[("one-more", "digit 1 - digit 0")] == pytest.approx(3 / (math.sqrt(2) * math.sqrt(5)), abs=1e-6)
        assert res.summary["alignment"]["per_layer"][0]["layer"] == 1
    finally:
        with torch.no_grad():
            handle.model.model.norm.weight.fill_(1.0)
    # a LayerNorm subtracts the mean: its readout directions are centred (GPT-2)
    gpt2 = load(tiny_models["gpt2"], device="cpu")
    V = readout_directions(gpt2, K).numpy()
    ln = gpt2.model.transformer.ln_f
    ids = count_token_ids(gpt2, ["("], K)[0]
    raw = (gpt2.model.lm_head.weight[ids] * ln.weight).detach().double().numpy()
    assert np.allclose(V, raw - raw.mean(1, keepdims=True), atol=1e-12) and np.abs(V.sum(1)).max() < 1e-9


def test_results_round_trip_and_draw(planted, tmp_path):
    handle, rows = planted
    means = np.random.default_rng(0).standard_normal((2, K + 1, 32)).astype(np.float32)
    dirs = Directions("resid", "last", ["emb", 1], {"classes": np.arange(K + 1), "counts": np.full(K + 1, 10),
                                                     "means": means, "slope": means[:, 1] - means[:, 0]})
    lens = run_lens(handle, rows[:20], LensOptions(n_boot=50), directions=dirs)
    dla = run_dla(handle, rows[:20], DLAOptions(n_boot=50))
    lens.save(tmp_path / "lens")
    dla.save(tmp_path / "dla")
    back, dback = LensResult.load(tmp_path / "lens"), DLAResult.load(tmp_path / "dla")
    pd.testing.assert_frame_equal(back.table, lens.table)
    pd.testing.assert_frame_equal(back.alignment, lens.alignment)
    pd.testing.assert_frame_equal(dback.table, dla.table)
    assert back.summary == lens.summary and dback.summary == dla.summary
    assert lens.summary["options"] == LensOptions(n_boot=50).model_dump(mode="json")
    probe = [{"layer": x, "accuracy": a, "ci_low": a - 0.05, "ci_high": a + 0.05, "control_accuracy": 0.2}
             for x, a in (("emb", 0.2), (0, 0.3), (1, 0.9), (2, 0.95))]
    paths = lens_figures(back.table, back.summary, tmp_path / "fig", probe) + dla_figures(dback.table, dback.summary,
                                                                                           tmp_path / "fig")
    assert [p.name for p in paths] == ["lens_vs_probe.png", "lens_heatmap.png", "lens_alignment.png",
                                       "dla_heads_mlps.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)
    with pytest.raises(InputError, match="positions"):
        LensOptions(positions=("prefix",))
    with pytest.raises(ValidationError):
        DLAOptions().batch_size = 3  # frozen
