"""Attention to the items, attribution patching (AtP) and per-cell statistics of patching grids."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from countlens.bench.stats import holm as bench_holm
from countlens.data.generate import generate_dataset, generate_examples
from countlens.data.lexicon import load_lexicon
from countlens.data.pairs import build_pairs
from countlens.interp import atp, attention
from countlens.interp.acts import read_rows
from countlens.interp.atp import AtPOptions, AtPResult, choose_cells, compare, run_atp
from countlens.interp.attention import AttentionOptions, AttentionResult, run_attention
from countlens.interp.cellstats import cell_stats, sign_flip_p
from countlens.stats import benjamini_hochberg, holm
from countlens.interp.patching import PatchOptions, encode_pairs, load_pairs, run_patching
from countlens.models import hooks
from countlens.models.handle import load, pad_left
from countlens.report.atp_figures import atp_figures
from countlens.report.attention_figures import attention_figures
from countlens.sites import Site

KEY = ["pair", "direction", "site", "layer", "position", "head", "metric"]


def make_pairs(tmp_path, tokenizer, n, template="short", seed=1):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 300, seed=seed, template=template)
    build_pairs(data, tokenizer, n, tmp_path / "p.jsonl", template=template)
    return load_pairs(tmp_path / "p.jsonl")


# ------------------------------------------------------------------------------------------------ AtP

@pytest.fixture(scope="module")
def organism_atp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atp")
    handle = load("organism", device="cpu")
    generate_dataset(tmp / "d.jsonl", 300, seed=11)
    build_pairs(tmp / "d.jsonl", handle.tokenizer, 12, tmp / "p.jsonl")
    pairs = load_pairs(tmp / "p.jsonl")
    a = run_atp(handle, pairs, AtPOptions(sites=("resid",)))
    e = run_patching(handle, pairs, PatchOptions(sites=("resid",), positions="all"))
    return handle, a, e, pairs


def test_atp_batches_shrink_to_the_memory_budget_with_the_same_estimates(organism_atp):
    """The backward holds every layer's activations for the batch: `memory_budget` bounds the pairs per
    batch (AtP's 5 GB peak on SmolLM2 at 16 pairs), and the estimates do not depend on it."""
    from countlens.interp.atp import pair_bytes

    handle, a, _, pairs = organism_atp
    assert a.summary["pairs_per_batch"] == 16  # a 1 GB budget does not bind on the organism
    one = run_atp(handle, pairs, AtPOptions(sites=("resid",), memory_budget=1))
    assert one.summary["pairs_per_batch"] == 1 and one.summary["batches"] == one.summary["kept_pairs"]
    m = a.table.merge(one.table, on=KEY)  # a batch of one lists only its own pair's positions
    assert len(m) == len(one.table) > 1000 and (m.value_x - m.value_y).abs().max() < 1e-4  # batch padding: float noise
    per = pair_bytes(handle, 70, 5)
    two = run_atp(handle, pairs, AtPOptions(sites=("resid",), memory_budget=int(2.5 * per)))
    assert two.summary["pairs_per_batch"] == 2


def test_atp_agrees_with_exact_patching_on_the_organism_resid_grid(organism_atp, tmp_path):
    handle, a, e, pairs = organism_atp
    assert a.summary["kept_pairs"] == e.summary["kept_pairs"] >= 10
    assert a.summary["forwards"] == 2 * a.summary["batches"] and a.summary["backwards"] == a.summary["batches"]
    # the same long format, the same (pair, cell) rows: the tables merge one to one
    assert list(a.table.columns) == list(e.table.columns)
    an, en = a.table[a.table.metric == "normalized"], e.table[e.table.metric == "normalized"]
    assert len(an.merge(en, on=KEY)) == len(an) == len(en) > 1000
    c = compare(a.table, e.table).set_index("site")
    assert c.loc["resid", "spearman"] >= 0.8, c.loc["resid"].to_dict()
    assert c.loc["resid", "pearson_cells"] >= 0.8
    # patches before a pair's own changed token are exact no-ops: zeros in both tables
    handle_enc = encode_pairs(handle, pairs)
    first = {i: s - len(low) for i, s, low in zip(handle_enc.ids, handle_enc.start, handle_enc.low)}
    m = an.merge(en, on=KEY, suffixes=("_a", "_e"))
    before = m.position < m.pair.map(first)
    assert before.sum() > 100 and (m[before].value_a == 0).all() and (m[before].value_e == 0).all()
    # the last block's output at the answer decides the answer: AtP's first pick
    top = choose_cells(a, 5)
    assert len(top) == 5 and (top.iloc[0].site, top.iloc[0].layer, top.iloc[0].position) == ("resid", "3", -1)
    cells = atp.cell_table(a.table, e.table)
    paths = atp_figures(cells, compare(a.table, e.table), tmp_path)
    assert [p.name for p in paths] == ["atp_vs_exact.png"] and paths[0].stat().st_size > 1000
    back = AtPResult.load(a.save(tmp_path / "atp"))
    pd.testing.assert_frame_equal(back.table, a.table)
    assert back.summary["options"] == a.summary["options"] and back.summary["top_cells"] == a.summary["top_cells"]


def test_atp_equals_exact_patching_where_the_metric_is_linear(organism_atp):
    """Without the final norm the logits are linear in the last block's output and in its MLP output
    at the answer position (and nothing reads them elsewhere), so AtP is exact there."""
    handle, _, _, pairs = organism_atp
    norm, handle.model.model.norm = handle.model.model.norm, torch.nn.Identity()
    try:
        kw = dict(sites=("resid", "mlp"), layers=(str(handle.n_layers - 1),), positions="all", filter="none")
        a = run_atp(handle, pairs, AtPOptions(**kw)).table
        e = run_patching(handle, pairs, PatchOptions(**kw)).table
    finally:
        handle.model.model.norm = norm
    ld = a[a.metric == "logit_diff"].merge(e[e.metric == "logit_diff"], on=KEY, suffixes=("_a", "_e"))
    delta = a[a.metric == "delta_ld"].drop(columns="metric").merge(ld.drop(columns="metric"),
                                                                  on=[k for k in KEY if k != "metric"])
    assert len(delta) == len(a[a.metric == "delta_ld"]) > 100 and set(delta.site) == {"resid", "mlp"}
    exact_delta = delta.value_e - (delta.value_a - delta.value)  # patched LD - base LD
    assert exact_delta.abs().max() > 10  # the patches at the answer move LD a lot ...
    assert (delta.value - exact_delta).abs().max() < 1e-4 * exact_delta.abs().max()  # ... and AtP is exact
    elsewhere = delta.position != -1  # nothing reads these sites off the answer position
    assert delta[elsewhere].value.abs().max() == 0 and exact_delta[elsewhere].abs().max() < 1e-5 * exact_delta.abs().max()


def test_atp_gradients_match_finite_differences(tiny_models):
    """dLD/da from `metric_gradients` against central differences, for every site kind, in float64
    (GPT-2: Llama's RMSNorm computes in float32 whatever the model's dtype)."""
    handle = load(tiny_models["gpt2"], device="cpu")
    handle.model.double()
    ids = torch.randint(10, 200, (2, 9), generator=torch.Generator().manual_seed(0)).tolist()
    batch = pad_left(ids, 0)
    hi, lo = torch.tensor([40, 41]), torch.tensor([42, 43])
    sites = [Site("resid", "emb"), Site("resid", 1), Site("attn", 1), Site("mlp", 0), Site("head", 2)]
    ld, acts, grads = atp.metric_gradients(handle, batch, hi, lo, sites)
    g = torch.Generator().manual_seed(1)
    for site in sites:
        for p in (3, 8):
            u = torch.randn(acts[site].shape[2:], generator=g, dtype=torch.float64)
            eps = 1e-5

            def ld_at(t: float) -> torch.Tensor:
                def fn(x):
                    x = x.clone()
                    x[0, p] = x[0, p] + t * u
                    return x
                with torch.no_grad(), hooks.edit(handle, site, fn):
                    lg = handle.model(**batch).logits[:, -1]
                return lg[0, hi[0]] - lg[0, lo[0]]
            fd = float((ld_at(eps) - ld_at(-eps)) / (2 * eps))
            an = float((grads[site][0, p] * u).sum())
            assert an == pytest.approx(fd, rel=1e-5, abs=1e-8), (site, p)
    assert float(ld[0]) == pytest.approx(float(ld_at(0.0)), abs=1e-6)  # the hooked forward is the plain one


# ------------------------------------------------------------------------------------------ attention

def planted_rows(category="fruit", n=24):
    rows = generate_examples(n, seed=3, template="short", categories=[category], max_count=4)
    return read_rows(rows, template="short")


def plant_head(handle, layer: int, head: int, members: list[str], alpha: float = 2.0) -> None:
    """Head `head` of block `layer` attends from the answer prefix '(' to the category's member tokens.

    Embedding dimension 30 marks '(' and 31 marks the members; the head's query reads 30 and its
    (shared, GQA) key head reads 31 on the last rotary pair, whose RoPE frequency (1e-3 rad per
    token) leaves the score position-independent. Every other weight stays random."""
    m = handle.model
    d, H = m.config.head_dim, m.config.num_attention_heads
    kv = head // (H // m.config.num_key_value_heads)
    tok = handle.tokenizer
    with torch.no_grad():
        emb = m.model.embed_tokens.weight
        emb[:, 30:] = 0
        emb[tok.convert_tokens_to_ids("("), 30] = 1.0
        emb[tok.convert_tokens_to_ids(members), 31] = 1.0
        attn = m.model.layers[layer].self_attn
        attn.q_proj.weight[head * d:(head + 1) * d] = 0
        attn.q_proj.weight[head * d + d // 2 - 1, 30] = alpha
        attn.k_proj.weight[kv * d:(kv + 1) * d] = 0
        attn.k_proj.weight[kv * d + d // 2 - 1, 31] = alpha


def test_a_planted_matching_head_ranks_first_on_a_gqa_model(tiny_models, tmp_path):
    handle = load(tiny_models["llama"], device="cpu")
    cfg = handle.model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    before = cfg._attn_implementation
    assert before != "eager"
    plant_head(handle, 1, 2, list(load_lexicon("clean-v1").categories["fruit"]))
    rows = planted_rows()
    res = run_attention(handle, rows, AttentionOptions(batch_size=5, n_boot=200))
    assert cfg._attn_implementation == before  # switched back
    top = res.summary["top_heads"][0]
    assert (top["layer"], top["head"]) == (1, 2) and top["ci_low"] > 0.1
    assert top["nonmatch_mean"] < 1e-3 and top["diff"] == pytest.approx(top["match_mean"] - top["nonmatch_mean"])
    assert res.summary["top_heads"][1]["diff"] < 0.1 * top["diff"]
    top_value = res.summary["top_heads_value"]  # it also writes what it reads from them
    assert (top_value[0]["layer"], top_value[0]["head"]) == (1, 2) and top_value[1]["diff"] < 0.1 * top_value[0]["diff"]
    t = res.table
    total = t[(t["query"] == "answer") & (t.weighting == "attention") & (t.measure == "total")]
    assert len(total) == handle.n_layers * cfg.num_attention_heads
    assert np.allclose(total["mean"], 1.0, atol=1e-5) and np.allclose(total.ci_low, 1.0, atol=1e-5)
    parts = t[(t["query"] == "answer") & (t.weighting == "attention")].pivot_table(
        index=["layer", "head"], columns="measure", values="mean")
    assert np.allclose(parts.match_sum + parts.nonmatch_sum + parts.other_sum, 1.0, atol=1e-5)
    assert set(t["query"]) == {"answer", "items"} and set(t.weighting) == {"attention", "value"}
    back = AttentionResult.load(res.save(tmp_path / "attn"))
    pd.testing.assert_frame_equal(back.table, res.table)
    assert back.summary == res.summary and back.summary["options"]["n_boot"] == res.summary["options"]["n_boot"]
    paths = attention_figures(res.table, res.summary, tmp_path)
    assert [p.name for p in paths] == ["attention_heads_answer.png", "attention_heads_items.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_attention_implementation_is_restored_when_the_stage_raises(tiny_models, monkeypatch):
    handle = load(tiny_models["llama"], device="cpu")
    before = handle.model.config._attn_implementation

    def boom(*args, **kwargs):
        assert handle.model.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    monkeypatch.setattr(attention, "example_measures", boom)
    with pytest.raises(RuntimeError, match="boom"):
        run_attention(handle, planted_rows(n=3))
    assert handle.model.config._attn_implementation == before


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "gemma3", "mistral", "phi3", "neox"])
def test_value_vectors_rebuild_every_heads_output(arch, tiny_models, tiny_arch_models):
    """sum_j a_ij v_j is the output projection's input (the head site) on every architecture, so the
    self-only-mask forward reads the model's own value vectors; the write norms match W_O's slices."""
    handle = load({**tiny_models, **tiny_arch_models}[arch], device="cpu")
    ids = torch.randint(10, 200, (2, 11), generator=torch.Generator().manual_seed(0)).tolist()
    ids[1] = ids[1][:7]
    batch = pad_left(ids, 0)
    sites = [Site("head", layer) for layer in range(handle.n_layers)]
    with attention.eager_attention(handle.model):
        with torch.no_grad(), hooks.capture(handle, sites) as z:
            handle.model(**batch, use_cache=False)
        weights, values = attention.forward_attention(handle, batch)
    for layer in range(handle.n_layers):
        rebuilt = torch.einsum("bhij,bjhd->bihd", weights[layer], values[layer].float())
        real = z[Site("head", layer)]
        keep = batch["attention_mask"].bool()  # padded query rows attend nowhere real
        assert torch.allclose(rebuilt[keep], real[keep], atol=1e-5), (arch, layer)
    norms = attention.write_norms(handle, values)
    assert norms.shape == (handle.n_layers, 2, hooks.n_heads(handle.model), 11)
    if arch in ("llama", "gpt2"):
        proj = hooks.out_proj_module(handle.blocks[0])
        W = proj.weight if arch == "llama" else proj.weight.T   # GPT-2's Conv1D stores [in, out]
        v = values[0]
        d = v.shape[-1]
        manual = torch.stack([(v[:, :, h] @ W[:, h * d:(h + 1) * d].T).norm(dim=-1) for h in range(v.shape[2])], 1)
        assert torch.allclose(norms[0], manual, atol=1e-5)


# ------------------------------------------------------------------------------------------ cellstats

def test_cellstats_finds_planted_cells_and_controls_false_positives():
    rng = np.random.default_rng(0)
    n_pairs, n_null = 40, 200
    true = np.r_[np.zeros(n_null), [1.0, -0.9, 0.8]]
    x = true[None, :] + rng.normal(size=(n_pairs, len(true)))
    x[rng.random(x.shape) < 0.05] = np.nan  # pairs without that position
    table = pd.DataFrame({"pair": np.repeat(np.arange(n_pairs), len(true)), "site": "resid",
                          "layer": np.tile([str(i % 10) for i in range(len(true))], n_pairs), "head": -1,
                          "position": np.tile(-(np.arange(len(true)) // 10) - 1, n_pairs), "value": x.ravel()})
    for correction in ("bh", "holm"):
        out = cell_stats(table, correction=correction, n_perm=10000)
        assert len(out) == len(true) and out.attrs["correction"] == correction
        planted = out.merge(pd.DataFrame({"layer": [str(i % 10) for i in range(len(true))],
                                          "position": -(np.arange(len(true)) // 10) - 1, "true": true}),
                            on=["layer", "position"])
        assert planted[planted.true != 0].significant.all(), correction
        assert planted[planted.true == 0].significant.sum() <= 1, correction
        covered = (planted.ci_low <= planted.true) & (planted.true <= planted.ci_high)
        assert covered.mean() >= 0.9 and covered[planted.true != 0].all()
        assert (planted.p_adj >= planted.p - 1e-12).all()
    assert out.attrs["holm_can_reject"] and out.attrs["p_floor"] == pytest.approx(1 / 10001)
    with pytest.raises(ValueError, match="one metric and direction"):
        cell_stats(pd.concat([table, table]))


def test_corrections_and_the_exact_sign_flip():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.2])
    assert np.allclose(holm(p)[[0, 1, 2, 4]], [0.04, 0.09, 0.09, 0.2])
    assert np.isnan(holm(p)[3]) and np.isnan(benjamini_hochberg(p)[3])
    assert np.allclose(benjamini_hochberg(p)[[0, 1, 2, 4]], [0.04, 0.0533333, 0.0533333, 0.2])
    q = np.random.default_rng(1).random(30)
    assert np.allclose(holm(q), bench_holm(list(q)))  # the benchmark's list version
    # five positive values: 2 of 32 sign patterns are as extreme (exact enumeration)
    assert sign_flip_p(np.array([[1.0], [2.0], [0.5], [1.5], [3.0]]))[0] == pytest.approx(2 / 32)
    assert sign_flip_p(np.zeros((20, 1)))[0] == 1.0


def test_cellstats_is_fast_on_a_smollm2_sized_grid():
    rng = np.random.default_rng(0)
    idx = pd.MultiIndex.from_product([range(40), ["resid", "attn", "mlp", "head"], [str(i) for i in range(30)], [-1],
                                      range(-120, 0)], names=["pair", "site", "layer", "head", "position"])
    table = idx.to_frame(index=False).assign(value=rng.normal(size=len(idx)))
    t0 = time.perf_counter()
    out = cell_stats(table)
    assert len(out) == 4 * 30 * 120 and out.significant.sum() <= 2
    assert time.perf_counter() - t0 < 40
