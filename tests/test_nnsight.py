"""The nnsight engine (`--engine nnsight`) computes what the native engine computes.

nnsight executes a trace in-process when it is not remote, so these run here: on the organism and on
SmolLM2-135M-Instruct, the per-layer patching effects, captured activations, steered logits (and
steered generations) and the logit lens of the two engines agree to 1e-4 in float32. `--remote`
without a key, and with a key but no reachable NDIF, is one line and exit 2, and the key is never
printed or written.
"""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from countlens.models.registry import NAMED, named_gguf
from countlens.interp.patching import METRICS
from countlens.options import PatchOptions, SteerOptions

pytest.importorskip("nnsight", reason="the nnsight engine needs nnsight (the dev extra installs it)")

TOL = 1e-4


def _study_inputs(tmp, tokenizer, n_pairs: int):
    from countlens.data.generate import generate_dataset
    from countlens.data.pairs import build_pairs
    from countlens.data.schema import read_examples
    from countlens.interp.patching import load_pairs

    generate_dataset(tmp / "data.jsonl", 80, seed=5, template="seed-v1")
    build_pairs(tmp / "data.jsonl", tokenizer, n_pairs, tmp / "pairs.jsonl", template="seed-v1")
    rows = [ex.row() for _, ex in read_examples(tmp / "data.jsonl")]
    by_n = [[r for r in rows if r["answer"] == k] for k in range(6)]
    rows = [g[i] for i in range(min(map(len, by_n))) for g in by_n]   # every count in both steering halves
    return tmp / "data.jsonl", load_pairs(tmp / "pairs.jsonl"), rows


def _close(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> None:
    assert len(a) == len(b) > 0
    for c in cols:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), atol=TOL, rtol=0, err_msg=c)


def _equivalent(name: str, tmp, n_pairs: int, layers: tuple | None, steer_layers: tuple, patch_sites=("resid",),
                n_rows: int = 12, full: bool = True):
    from countlens.interp.acts import collect_activations
    from countlens.interp.patching import run_patching
    from countlens.interp.steering import collect_last, encode_rows, run_steering
    from countlens.models.handle import load
    from countlens.sites import Site
    from countlens.study.analyses import run_analyses

    native = load(name, device="cpu")
    nn = load(name, device="cpu", engine="nnsight")
    assert nn.hooks is not None and native.hooks is None
    data, pairs, rows = _study_inputs(tmp, native.tokenizer, n_pairs)

    # patching: native takes its KV-reuse fast path, nnsight full forwards (the reference method). The
    # normalized effect divides by a pair's clean logit-diff gap, which amplifies the fast path's float
    # reordering (up to 2e-3 on SmolLM2): it is compared with the native reference, the rest with both.
    opts = PatchOptions(sites=patch_sites, positions="last", layers=layers, filter="none", n_boot=10)
    tb = run_patching(nn, pairs, opts).table
    assert nn.model.requests > 0
    key = ["pair", "site", "layer", "head", "position", "metric"]
    for method, metrics in (("fast", ["logit_diff", "p_target", "exact_match"]), ("reference", list(METRICS))):
        ta = run_patching(native, pairs, opts.model_copy(update={"method": method})).table
        m = ta.merge(tb, on=key, suffixes=("_a", "_b"))
        m = m[m.metric.isin(metrics)]
        assert len(m) == len(ta[ta.metric.isin(metrics)]) > 0
        np.testing.assert_allclose(m.value_a, m.value_b, atol=TOL, rtol=0, err_msg=method)
    p_native = ta

    # captured activations, float32 (steering's capture) and the activation store (float16 files)
    enc = encode_rows(native, rows[:n_rows], native.template("seed-v1"))
    lay = list(steer_layers)
    a, b = collect_last(native, enc, lay, 6), collect_last(nn, enc, lay, 6)
    for layer in lay:
        assert np.abs(a[layer]).max() > 0
        np.testing.assert_allclose(a[layer], b[layer], atol=TOL, rtol=0)
    sa = collect_activations(native, data, tmp / "acts_native", layers=lay, n=n_rows, progress=False)
    sb = collect_activations(nn, data, tmp / "acts_nn", layers=lay, n=n_rows, progress=False)
    assert sa.n_examples == sb.n_examples == n_rows and sa.n_rows == sb.n_rows
    from countlens.interp.store import ActStore

    for site in sa.sites:
        xa = np.asarray(ActStore.open(tmp / "acts_native").array(site))
        xb = np.asarray(ActStore.open(tmp / "acts_nn").array(site))
        np.testing.assert_array_equal(xa, xb)

    # steered logits: a vector added at each layer's answer position (rows' own vectors, two scales)
    from countlens.interp.steering import count_logprobs

    k = torch.Generator().manual_seed(2)
    vec = torch.randn(len(enc.ids), native.model.config.hidden_size, generator=k)
    count_tokens = [t[0] for t in native.answer_tokens(5)]
    for layer in lay:
        for scale in (1.0, 4.0):
            sa_, sb_ = (count_logprobs(h, enc, list(range(len(enc.ids))), count_tokens, Site("resid", layer), vec,
                                       scale) for h in (native, nn))
            np.testing.assert_allclose(sa_.numpy(), sb_.numpy(), atol=TOL, rtol=0)
    assert (sa_ - count_logprobs(native, enc, list(range(len(enc.ids))), count_tokens)).abs().max() > 0.01

    # the logit lens with its readout inside the trace (how it runs on NDIF: norm and unembedding there)
    l_native = run_analyses(native, tmp / "an_native", data=data, n=n_rows, which=("lens",))["lens"].to_frame()
    nn.model.readout_in_trace = True
    sent = nn.model.requests
    l_trace = run_analyses(nn, tmp / "an_trace", data=data, n=n_rows, which=("lens",))["lens"].to_frame()
    nn.model.readout_in_trace = False
    assert nn.model.requests > sent
    num = [c for c in l_native.columns if pd.api.types.is_float_dtype(l_native[c])]
    assert num
    _close(l_native, l_trace, num)

    if not full:
        return None
    # the steering stage end to end: the same fitted vectors, sweep and greedy steered generations
    so = SteerOptions(layers=steer_layers, scales=(0.0, 2.0), n_boot=10, generate_n=4, max_new_tokens=4)
    s_native, s_nn = run_steering(native, rows[:40], so), run_steering(nn, rows[:40], so)
    _close(s_native.table, s_nn.table, ["expected", "p_target", "count_mass"])
    assert s_native.summary["generate"] == s_nn.summary["generate"]

    # the logit lens on captured residuals, read out here (the local nnsight engine's default)
    l_nn = run_analyses(nn, tmp / "an_nn", data=data, n=n_rows, which=("lens",))["lens"].to_frame()
    _close(l_native, l_nn, num)
    return p_native


def test_nnsight_engine_equals_native_on_the_organism(tmp_path):
    p = _equivalent("organism", tmp_path, 6, None, ("emb", 1, 3), patch_sites=("resid", "attn", "head"))
    assert p.value.abs().max() > 0.5      # the comparison is not between two zero tables


@pytest.mark.real
@pytest.mark.skipif(named_gguf(NAMED["smollm2-135m"]) is None,
                    reason=f"SmolLM2 is not installed: {NAMED['smollm2-135m'].install}")
def test_nnsight_engine_equals_native_on_smollm2(tmp_path):
    _equivalent("smollm2-135m", tmp_path, 2, ("emb", 10, 29), (10, 20), n_rows=6, full=False)


def test_remote_without_a_key_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NDIF_API_KEY"}
    proc = run_cli("patch", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--engine", "nnsight", "--remote",
                   "--pairs", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2
    assert "NDIF_API_KEY" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_remote_with_no_reachable_ndif_is_one_line_and_never_shows_the_key(tmp_path):
    key = "ndif-secret-key-123"
    home = tmp_path / "home"
    env = {**os.environ, "NDIF_API_KEY": key, "NDIF_HOST": "http://127.0.0.1:9", "HOME": str(home),
           "NNSIGHT_CONFIG": str(tmp_path / "nnsight.yaml")}
    from countlens import build_pairs
    from countlens.data.generate import generate_dataset

    generate_dataset(tmp_path / "d.jsonl", 40, seed=1)
    build_pairs(tmp_path / "d.jsonl", "organism", 2, tmp_path / "p.jsonl")
    proc = run_cli("patch", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--engine", "nnsight", "--remote",
                   "--pairs", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NDIF" in lines[0], proc.stderr[-2000:]
    assert key not in proc.stderr + proc.stdout
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".jsonl",)]
    assert all(key not in p.read_text(errors="ignore") for p in written)
    assert not (tmp_path / "nnsight.yaml").exists() or key not in (tmp_path / "nnsight.yaml").read_text()


def test_remote_needs_the_nnsight_engine():
    from countlens.errors import InputError
    from countlens.models.handle import load

    with pytest.raises(InputError, match="--engine nnsight"):
        load("organism", remote=True)


def test_engine_keys_are_study_config_keys():
    from countlens.study.config import build_config

    cfg = build_config(preset="quick", engine="nnsight")
    assert cfg.engine == "nnsight" and cfg.remote is False
    # the engine does not change what a stage computes: switching it keeps finished stages
    assert cfg.stage_hash("patch") == build_config(preset="quick").stage_hash("patch")
    with pytest.raises(Exception, match="engine"):
        build_config(preset="quick", engine="tl")


def test_nnsight_edits_run_in_the_order_the_forward_reaches_them():
    """Edits registered late-layer first still apply (nnsight reads modules only in forward order)."""
    from countlens.models import hooks
    from countlens.models.handle import load, pad_left
    from countlens.sites import Site

    a, b = load("organism", device="cpu"), load("organism", device="cpu", engine="nnsight")
    batch = pad_left([a.encode_text(a.format("Type: fruit\nList: apple pear dog\nAnswer: ") + "(")], a.pad_id)
    v = torch.randn(a.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    outs = []
    for h in (a, b):
        with torch.no_grad(), hooks.add(h, Site("resid", 3), v), hooks.add(h, Site("mlp", 0), v), \
                hooks.capture(h, [Site("resid", 2), Site("resid", "emb")]) as got:
            outs.append((h.model(**batch).logits[:, -1], got[Site("resid", 2)]))
    assert (outs[0][0] - outs[1][0]).abs().max() < TOL and (outs[0][1] - outs[1][1]).abs().max() < TOL
    with torch.no_grad():
        plain = a.model(**batch).logits[:, -1]
    assert (plain - outs[0][0]).abs().max() > 0.1


def test_nnsight_generation_applies_prompt_only_and_new_token_edits_like_native():
    from countlens.models import hooks
    from countlens.models.generation import greedy_generate
    from countlens.models.handle import load
    from countlens.sites import Site

    a, b = load("organism", device="cpu"), load("organism", device="cpu", engine="nnsight")
    texts = [a.format(f"Type: fruit\nList: {w}\nAnswer: ") for w in ("apple pear dog", "cat cow apple plum fig")]
    v = torch.randn(a.model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 30
    plain = greedy_generate(a, texts, max_new_tokens=4)
    seen = set()
    for kw in (dict(positions=[-1], new_tokens=True), dict(positions=[-1], prompt_only=True), dict(prompt_only=True)):
        outs = []
        for h in (a, b):
            with torch.no_grad(), hooks.add(h, Site("resid", 1), v, **kw):
                outs.append(greedy_generate(h, texts, max_new_tokens=4))
        assert outs[0] == outs[1], kw
        seen.add(tuple(outs[0]))
    assert any(o != tuple(plain) for o in seen)       # the edits change what is generated


def test_a_rerun_reads_finished_requests_from_the_request_cache(tmp_path):
    """What lets an interrupted remote run resume: a forward already answered is read back, not sent."""
    from countlens.interp.patching import load_pairs, run_patching
    from countlens.models.handle import load
    from countlens.models.nnsight_engine import RequestCache

    from countlens import build_pairs
    from countlens.data.generate import generate_dataset

    generate_dataset(tmp_path / "d.jsonl", 60, seed=2)
    build_pairs(tmp_path / "d.jsonl", "organism", 3, tmp_path / "p.jsonl")
    pairs = load_pairs(tmp_path / "p.jsonl")
    opts = PatchOptions(positions="last", layers=("emb", 1, 3), filter="none", n_boot=10)
    runs = []
    for _ in range(2):
        h = load("organism", device="cpu", engine="nnsight")
        h.model.cache = RequestCache(tmp_path / "requests")
        runs.append((run_patching(h, pairs, opts).table, h.model.requests))
    (t1, sent1), (t2, sent2) = runs
    assert sent1 > 0 and sent2 == 0
    pd.testing.assert_frame_equal(t1, t2)
    # a different intervention is a different request
    h = load("organism", device="cpu", engine="nnsight")
    h.model.cache = RequestCache(tmp_path / "requests")
    run_patching(h, pairs, opts.model_copy(update={"layers": ("emb", 2)}))
    assert h.model.requests > 0


def test_request_keys_tell_apart_what_changes_an_answer():
    """The resume cache's key covers the inputs, each intervention's values and the reduction's arguments."""
    import functools

    from countlens.models.nnsight_engine import RequestCache, _Intervention
    from countlens.sites import Site

    ids = torch.tensor([[1, 2, 3]])

    def edit_with(v):
        def fn(x):
            return x + v
        return _Intervention(Site("resid", 1), fn)

    k = RequestCache.key
    base = k({"input_ids": ids, "reduce": None}, [edit_with(torch.ones(4))])
    assert base == k({"input_ids": ids.clone(), "reduce": None}, [edit_with(torch.ones(4))])
    assert base != k({"input_ids": ids + 1, "reduce": None}, [edit_with(torch.ones(4))])
    assert base != k({"input_ids": ids, "reduce": None}, [edit_with(2 * torch.ones(4))])
    assert base != k({"input_ids": ids, "reduce": None}, [])
    from countlens.models.nnsight_engine import _closure_values

    r1 = functools.partial(torch.index_select, dim=0, index=torch.tensor([1]))
    r2 = functools.partial(torch.index_select, dim=0, index=torch.tensor([2]))
    keys = [k({"input_ids": ids, "reduce": _closure_values(r)}, []) for r in (r1, r2)]
    assert keys[0] != keys[1]
