import json

import pandas as pd
import pytest
import torch

from conftest import run_cli
from countlens.data.generate import generate_dataset
from countlens import build_pairs
from countlens.interp.patching import PatchOptions, load_pairs, run_patching
from countlens.models.hooks import capture
from countlens.sites import Site
from countlens.models.handle import load

KEY = ["pair", "direction", "site", "layer", "position", "head", "metric"]


def make_pairs(tmp_path, tokenizer_path, n=6, template="short", seed=1):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 300, seed=seed, template=template)
    out = tmp_path / "p.jsonl"
    build_pairs(data, tokenizer_path, n, out, template=template)
    return load_pairs(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_fast_equals_reference_for_every_site_and_position_mode(tmp_path, tiny_models, arch):
    if arch not in tiny_models:
        pytest.skip("the real Qwen tokenizer (../shared/fixtures) is absent")
    handle = load(tiny_models[arch], device="cpu")
    template = "short" if arch != "qwen2" else "seed-v1"
    pairs = make_pairs(tmp_path, tiny_models[arch], n=4, template=template)
    modes = {"llama": ["last", "all", "-1,-2"], "gpt2": ["last", "-1,-3"], "qwen2": ["last"]}[arch]
    for positions in modes:
        tables = {}
        for method in ("fast", "reference"):
            opts = PatchOptions(sites=("resid", "attn", "mlp", "head"), positions=positions,
                                directions=("denoise", "noise"), method=method, filter="none", batch_size=3,
                                template=template)
            tables[method] = run_patching(handle, pairs, opts).table
        a, b = tables["fast"], tables["reference"]
        m = a.merge(b, on=KEY, suffixes=("_f", "_r"))
        assert len(m) == len(a) == len(b) > 0
        for metric in ("logit_diff", "p_target", "exact_match"):
            d = (m[m.metric == metric].value_f - m[m.metric == metric].value_r).abs().max()
            assert d < 1e-4, (positions, metric, d)
        # (the normalised effect is a ratio of these logit differences; on random weights its
        # denominator can be ~0, so it is compared through logit_diff, not on its own)


def test_layer_L_is_the_output_of_block_L(tiny_models):
    """Our resid layer L equals HF hidden_states[L+1] except the last (HF's is after the final norm)."""
    h = load(tiny_models["llama"], device="cpu")
    ids = torch.tensor([[h.tokenizer.bos_token_id] + list(range(10, 20))])
    sites = [Site("resid", "emb")] + [Site("resid", i) for i in range(h.n_layers)]
    with torch.no_grad(), capture(h, sites) as st:
        hs = h.model(ids, output_hidden_states=True).hidden_states
    assert torch.equal(st[Site("resid", "emb")], hs[0])
    for i in range(h.n_layers - 1):
        assert torch.equal(st[Site("resid", i)], hs[i + 1])
        assert not torch.allclose(st[Site("resid", i)], hs[i])  # the original's off-by-one would match this
    last = st[Site("resid", h.n_layers - 1)]
    assert not torch.allclose(last, hs[-1])  # HF's last entry is normed
    assert torch.allclose(h.model.model.norm(last), hs[-1], atol=1e-6)


@pytest.fixture(scope="module")
def organism_patch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orgpatch")
    data = tmp / "d.jsonl"
    generate_dataset(data, 400, seed=11)
    pairs_file = tmp / "pairs.jsonl"
    build_pairs(data, "organism", 40, pairs_file)
    handle = load("organism", device="cpu")
    res = run_patching(handle, load_pairs(pairs_file), PatchOptions(sites=("resid",), generate=True))
    return handle, res, pairs_file


def test_accident_proof_checks_on_the_organism(organism_patch):
    handle, res, _ = organism_patch
    s = res.summary
    assert s["kept_pairs"] >= 35 and s["dropped_misaligned"] == 0
    per = {e["layer"]: e for e in s["per_layer"]}
    last = handle.n_layers - 1
    assert abs(per[last]["mean"] - 1.0) < 1e-3  # last block output at the last position decides the logits
    assert abs(per["emb"]["mean"]) < 1e-3  # the last token is the same word in both prompts
    assert per[last]["exact_match"] == 1.0
    gen = {e["layer"]: e for e in s["generate"]}
    assert gen[last]["gen_exact_match"] == 1.0 and gen["emb"]["gen_changed"] == 0.0


def test_patch_cli_writes_grids_figures_and_summary(tmp_path, organism_patch):
    _, _, pairs_file = organism_patch
    out = tmp_path / "patch"
    proc = run_cli("patch", "--model", "organism", "--pairs", str(pairs_file), "--n", "6", "--out", str(out),
                   "--sites", "resid,attn,mlp,head", "--positions", "-1,-2,-3,-5,-8,-13,-21,-34", "--json",
                   check=True)
    s = json.loads(proc.stdout)
    assert [e["layer"] for e in s["per_layer"]] == ["emb", *range(load("organism").n_layers)]
    assert s["per_layer"][0]["mean"] == pytest.approx(0, abs=1e-3)
    assert s["per_layer"][-1]["mean"] == pytest.approx(1, abs=1e-3)
    assert s["method"] == "fast" and s["kept_pairs"] <= 6
    table = pd.read_parquet(out / "table.parquet")
    assert list(table.columns) == ["pair", "n_low", "direction", "site", "layer", "position", "position_name",
                                   "head", "metric", "value"]
    assert set(table.site) == {"resid", "attn", "mlp", "head"} and table.position.min() == -34
    for f in ("patch_per_layer.png", "patch_heatmap_resid.png", "patch_heads.png", "summary.json"):
        assert (out / f).stat().st_size > 1000
    bad = run_cli("patch", "--pairs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr


BF16_ATOL = 0.05  # logits, absolute; bfloat16 keeps ~3 significant digits (step 0.03 at |x| ~ 8)


def test_fast_equals_reference_within_the_stated_bfloat16_tolerance(tmp_path, tiny_models):
    """bfloat16: fast vs reference logit differences agree to BF16_ATOL (+1 % relative).

    Measured on the organism in bfloat16 (8 pairs, 4 sites, 5 positions): max |difference| 0.0.
    """
    handle = load(tiny_models["llama"], device="cpu", dtype="bfloat16")
    pairs = make_pairs(tmp_path, tiny_models["llama"], n=4)
    for positions in ("last", "all"):
        tables = {m: run_patching(handle, pairs, PatchOptions(sites=("resid", "attn", "mlp", "head"),
                                                              positions=positions, method=m, filter="none",
                                                              batch_size=3, template="short")).table
                  for m in ("fast", "reference")}
        m = tables["fast"].merge(tables["reference"], on=KEY, suffixes=("_f", "_r"))
        assert len(m) == len(tables["fast"]) > 0
        ld = m[m.metric == "logit_diff"]
        err = (ld.value_f - ld.value_r).abs()
        assert (err <= BF16_ATOL + 0.01 * ld.value_r.abs()).all(), err.max()
        assert err.max() < 1.0  # and nothing is grossly off


def test_named_positions_patch_each_pair_at_its_own_words(tmp_path, tiny_models):
    """named = the changed word's last token, the last list word's last token, the answer; each pair at its
    own indices, equal to patching that pair alone at those offsets (fast == reference)."""
    handle = load(tiny_models["llama"], device="cpu")
    pairs = make_pairs(tmp_path, tiny_models["llama"], n=4, template="short")
    opts = dict(sites=("resid", "attn"), component_positions="last", filter="none", batch_size=4, template="short")
    fast = run_patching(handle, pairs, PatchOptions(positions="named", **opts)).table
    ref = run_patching(handle, pairs, PatchOptions(positions="named", method="reference", **opts)).table
    assert set(fast.position_name) == {"changed", "last_item", "answer"}
    assert set(fast[fast.site == "attn"].position_name) == {"answer"}  # components at the answer only
    m = fast.merge(ref, on=KEY, suffixes=("_f", "_r"))
    assert len(m) == len(fast) == len(ref)
    ld = m[m.metric == "logit_diff"]
    assert (ld.value_f - ld.value_r).abs().max() < 1e-4
    from countlens.interp.patching import encode_pairs

    enc = encode_pairs(handle, pairs, "short")
    for i, pid in enumerate(enc.ids):
        rows = fast[(fast.pair == pid) & (fast.site == "resid") & (fast.layer == "0") & (fast.metric == "logit_diff")]
        got = dict(zip(rows.position_name, rows.position))
        want = {k: v - len(enc.low[i]) for k, v in enc.named_positions(i).items()}
        assert got == want
        # the last list word is a list word: the token right after it is the template's, not a word
        assert enc.start[i] <= enc.end[i] < enc.last_item[i] or enc.end[i] == enc.last_item[i]


def test_position_heatmap_is_labelled_with_an_example_prompts_tokens(tmp_path, monkeypatch):
    """The x axis of a layer x position heatmap names the tokens, and the changed word is marked."""
    import countlens.report.patch_figures as pf

    data = tmp_path / "d.jsonl"
    generate_dataset(data, 100, seed=3)
    build_pairs(data, "organism", 4, tmp_path / "p.jsonl")
    pairs = load_pairs(tmp_path / "p.jsonl")
    res = run_patching(load("organism", device="cpu"), pairs,
                       PatchOptions(sites=("resid",), positions="all", filter="none", generate=False))
    ex = res.summary["example"]
    pair = next(p for p in pairs if p["id"] == ex["pair"])
    assert ex["tokens"][ex["changed"][0]].strip() == pair["low_word"]  # the changed word's first token
    labels = {}

    def keep_labels(fig, path):
        ax = fig.axes[0]
        labels[Path(path).name] = [(t.get_text(), t.get_color()) for t in ax.get_xticklabels()]
        return Path(path)

    from pathlib import Path

    monkeypatch.setattr(pf, "save", keep_labels)
    res.plot(tmp_path)
    ticks = labels["patch_heatmap_resid.png"]
    texts = [t for t, _ in ticks]
    assert f"{pair['low_word']} {ex['changed'][0]}" in texts       # "papaya -48": token and offset
    assert "( -1" in texts                                          # the answer position
    red = [t for t, c in ticks if c == "tab:red"]
    assert red and red[0].startswith(pair["low_word"])
    assert len(texts) == len(set(res.table.position))               # every position labelled
    # named positions: columns are the names, with the example's token under each
    got, changed = pf.position_labels(["changed", "last_item", "answer"], ex, named=True)
    assert got[0] == f"changed word\n{pair['low_word']}" and changed == {0}
    assert got[1] == f"last list word\n{pair['low']['word_list'][-1]}" and got[2] == "answer position\n("
