import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from countlens.data.generate import generate_examples
from countlens.errors import InputError
from countlens.models import kvcache
from countlens.sites import Site
from countlens.interp.steering import (SteerOptions, _row_bytes, count_logprobs, count_logprobs_last, encode_rows,
                                       run_steering)
from countlens.models.handle import load, pad_left


def test_scale_zero_reproduces_the_unsteered_logits_exactly(tiny_models):
    h = load(tiny_models["llama"], device="cpu")
    tpl = h.template("short")
    enc = encode_rows(h, generate_examples(8, 1, template="short"), tpl)
    toks = [a[0] for a in h.answer_tokens(5)]
    idx = list(range(8))
    base = count_logprobs(h, enc, idx, toks)
    v = torch.randn(8, h.model.config.hidden_size).numpy()
    for positions in ("last", "from-list", "all"):
        zero = count_logprobs(h, enc, idx, toks, Site("resid", 1), v, 0.0, positions)
        assert torch.equal(zero, base)
        # a hook that adds an exact zero vector is also a no-op
        same = count_logprobs(h, enc, idx, toks, Site("resid", 1), v * 0, 1.0, positions)
        assert torch.allclose(same, base, atol=1e-6)
        moved = count_logprobs(h, enc, idx, toks, Site("resid", 1), v, 5.0, positions)
        assert not torch.allclose(moved, base)


@pytest.fixture(scope="module")
def organism_steer():
    h = load("organism", device="cpu")
    rows = generate_examples(500, 21, template=h.template())
    opts = SteerOptions(scales=(0.0, 1.0, 2.0, 3.0, -1.0), generate=True, batch_size=150)
    return h, run_steering(h, rows, opts)


def test_one_more_succeeds_on_the_organism_and_random_does_not(organism_steer):
    """The issue's target on the shipped organism, at the best layer before the last block and its
    best scale, on held-out examples: N -> N+1 for >= 80 % with N in 0..4, random vector <= 10 %.

    Measured: block 2, scale 1, 89.1 % [84.6, 93.5] (by N 100 / 90 / 91 / 69 / 93 %), random 2.5 %.
    """
    h, res = organism_steer
    best = res.summary["best"]
    assert best["layer"] == h.n_layers - 2  # chosen before the last block
    assert best["success_rate"] >= 0.80
    assert best["control_success_rate"] <= 0.10
    assert set(best["by_n"]) == {"0", "1", "2", "3", "4"}
    assert min(best["by_n"].values()) >= 0.5  # no count class is left behind
    assert best["wrong_way"] <= 0.02
    assert res.summary["mean-diff"]["last_block"]["success_rate"] >= 0.95  # almost by construction
    assert res.summary["unsteered_accuracy"] >= 0.98
    gen = {g["vector"]: g for g in res.summary["generate"]}
    assert gen["none"]["correct_rate"] >= 0.98 and gen["mean-diff"]["parse_rate"] >= 0.9
    t = res.table
    zero = t[t.scale == 0]
    assert (zero.answer == zero.base_answer).all()


def test_generation_from_the_shared_prompt_prefix_equals_a_full_generate(organism_steer):
    """The generate checks start every setting from the batch's prompt KV (all but the last position);
    steering at the last position must give the same answers as a full generate() per setting."""
    from countlens.interp.steering import generate_steered, prompt_prefix

    h, res = organism_steer
    rows = generate_examples(40, 5, template=h.template())
    enc = encode_rows(h, rows, h.template())
    idx = [i for i in range(40) if enc.answers[i] < 5][:24]
    best = res.summary["best"]
    X = np.random.default_rng(0).normal(size=(len(idx), h.model.config.hidden_size)).astype(np.float32)
    shared = prompt_prefix(h, enc, idx)
    changed = 0
    for site, v, scale in [(Site("resid", "emb"), None, 0.0), (Site("resid", best["layer"]), X, 4.0),
                           (Site("resid", 1), X * 3, 2.0)]:
        full = generate_steered(h, enc, idx, site, v, scale, "last", 8, "(")
        fast = generate_steered(h, enc, idx, site, v, scale, "last", 8, "(", shared)
        assert fast == full
        changed += sum(a != int(enc.answers[i]) for a, i in zip(full, idx))
    assert changed > 0  # the steered settings did move some answers, so the comparison can fail
    with pytest.raises(ValueError):
        generate_steered(h, enc, idx, Site("resid", 1), X, 1.0, "all", 8, "(", shared)


def test_steer_cli(tmp_path):
    data = tmp_path / "d.jsonl"
    run_cli("data", "generate", "--n", "200", "--seed", "5", "--out", str(data), check=True)
    out = tmp_path / "steer"
    proc = run_cli("steer", "--data", str(data), "--out", str(out), "--layers", "1,2", "--scales", "1,2",
                   "--vector", "mean-diff", "--no-generate", "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["best"]["layer"] in (1, 2) and s["layers"] == ["1", "2"]
    assert (out / "steer_dose_response.png").exists() and (out / "table.parquet").exists()
    bad = run_cli("steer", "--data", str(data), "--out", str(out), "--vector", "nope")
    assert bad.returncode == 2 and "mean-diff" in bad.stderr


def _random_configs(h, B: int, scales=(0.0, 1.0, -2.0, 4.0)):
    g = torch.Generator().manual_seed(1)
    d = h.model.config.hidden_size
    configs = []
    for layer in ["emb", *range(h.n_layers)]:
        v = (torch.randn(B, d, generator=g) * 2).numpy()
        configs += [(Site("resid", layer), v, s) for s in scales]
    return configs


@pytest.mark.parametrize("arch", ["llama", "gpt2", "organism"])
def test_fast_last_position_equals_the_reference(arch, tiny_models):
    """One prompt forward + single-token forwards over its KV cache == a full forward per setting (1e-4,
    float32), with left padding (rows of different lengths), whatever the chunking by memory budget."""
    h = load("organism" if arch == "organism" else tiny_models[arch], device="cpu")
    tpl = h.template(None if arch == "organism" else "short")
    enc = encode_rows(h, generate_examples(8, 3, template=tpl), tpl)
    assert len(set(map(len, enc.ids))) > 1  # the batch is left-padded
    toks = [a[0] for a in h.answer_tokens(5, tpl.answer_prefix)]
    idx = list(range(8))
    configs = _random_configs(h, len(idx))
    base = count_logprobs(h, enc, idx, toks)
    ref = torch.stack([count_logprobs(h, enc, idx, toks, site, v, s, "last") for site, v, s in configs])
    batch = pad_left(enc.ids, h.pad_id)
    kv = kvcache.kv_tensors(kvcache.output_cache(kvcache.forward(h.model, **batch)))
    row = _row_bytes(kv, batch["input_ids"].shape[1] - 1, h.model.config.vocab_size)
    # all rows in one forward; one row per forward; slices of a setting; 5 whole settings per forward
    for budget in (1 << 30, 1, 3 * row, 40 * row):
        fbase, fast = count_logprobs_last(h, enc, idx, toks, configs, budget)
        assert torch.equal(fbase, base)
        assert torch.allclose(fast, ref, atol=1e-4, rtol=0), (fast - ref).abs().max()
        for r, (_, _, s) in enumerate(configs):
            if s == 0.0:
                assert torch.equal(fast[r], base)  # scale 0: the unsteered logits exactly
            else:
                assert not torch.allclose(fast[r], base, atol=1e-3)


def test_fast_sweep_equals_the_reference_on_the_organism():
    h = load("organism", device="cpu")
    rows = generate_examples(60, 4, template=h.template())
    common = dict(layers=("emb", 2, 3), scales=(0.0, 1.0, -1.5), generate=False, batch_size=16, n_boot=10)
    fast = run_steering(h, rows, SteerOptions(**common, memory_budget=8 << 20)).table  # chunked rows
    ref = run_steering(h, rows, SteerOptions(**common, method="reference")).table
    assert len(fast) == len(ref) > 0
    for col in ("expected", "p_target", "count_mass"):
        assert np.allclose(fast[col], ref[col], atol=1e-4, rtol=0), col
    for col in ("example", "n", "vector", "layer", "scale", "answer", "base_answer"):
        assert (fast[col] == ref[col]).all(), col
    zero = fast.scale == 0
    assert (fast[zero].expected.to_numpy() == ref[zero].expected.to_numpy()).all()


def test_other_positions_and_the_method_option(tiny_models):
    h = load(tiny_models["llama"], device="cpu")
    rows = generate_examples(40, 2, template="short")
    common = dict(layers=(1,), scales=(0.0, 2.0), vectors=("mean-diff", "random"), generate=False, n_boot=10,
                  template="short", batch_size=8)
    fast = run_steering(h, rows, SteerOptions(**common, positions="from-list")).table
    ref = run_steering(h, rows, SteerOptions(**common, positions="from-list", method="reference")).table
    pd.testing.assert_frame_equal(fast, ref)  # from-list / all always take the full-forward path
    with pytest.raises(InputError, match="fast or reference"):
        run_steering(h, rows, SteerOptions(**common, method="cached"))


def test_one_more_is_the_least_squares_slope_not_the_telescoped_end_difference():
    """The average of consecutive class-mean differences is (mu_last - mu_first) / (K - 1): it ignores
    the middle classes. one-more is the least-squares slope, which moves with them."""
    import numpy as np

    from countlens.interp.steering import fit_vectors

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    centers = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 6.0], [0.0, 0.0]])  # end classes equal
    X = (centers[y] + 0.01 * rng.standard_normal((len(y), 2))).astype(np.float32)
    v = fit_vectors(X, y, seed=0, layer_index=0)
    yc = y - y.mean()
    ls = (yc @ (X - X.mean(0))) / (yc @ yc)
    assert np.allclose(v.slope, ls, atol=1e-4)
    telescoped = (X[y == 3].mean(0) - X[y == 0].mean(0)) / 3
    assert np.abs(telescoped).max() < 0.01 and abs(v.slope[1] - 0.6) < 0.01  # [0, 0] vs [0, 0.6]
    assert np.allclose(v.vector("one-more", 1, 2), v.slope)


def test_steering_uses_the_probes_estimator_and_reads_their_saved_directions(tmp_path):
    """Steering fits its vectors with probe_fit.full_fit_directions (the code that writes the probes'
    directions), so directions a probes run saved on the same rows give the same vectors and numbers."""
    import numpy as np

    from countlens.interp.probe_fit import FitConfig, full_fit_directions
    from countlens.interp.probes import run_probes
    from countlens.interp.steering import collect_last, fit_vectors, load_vectors

    h = load("organism", device="cpu")
    rows = generate_examples(120, 4, template=h.template())
    train = encode_rows(h, rows[:60], h.template())
    X = collect_last(h, train, [2], 60)[2]
    v = fit_vectors(X, train.answers, seed=0, layer_index=0)
    full = full_fit_directions(X, train.answers, FitConfig(max_iter=500))
    assert np.array_equal(v.means, full["means"]) and np.array_equal(v.slope, full["slope"])
    # directions saved by a probes run on the training half, read back by steering
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:60]))
    run_probes(model=h, data=data, out=tmp_path / "probes", layers=["2"], folds=2, figures=False)
    loaded = load_vectors(str(tmp_path / "probes"), [2], seed=0)[2]
    scale = np.abs(v.means).max()  # the probes' store keeps activations in float16
    assert np.abs(loaded.means - v.means).max() < 2e-3 * scale and np.abs(loaded.slope - v.slope).max() < 2e-3 * scale
    opts = dict(layers=(2,), scales=(0.0, 1.0), vectors=("mean-diff", "one-more"), generate=False)
    fitted = run_steering(h, rows, SteerOptions(**opts))
    # with saved directions every row given is held out: here the same held-out half as `fitted`
    read = run_steering(h, rows[60:], SteerOptions(**opts, directions=str(tmp_path / "probes")))
    assert (read.summary["n_train"], read.summary["n_test"]) == (0, 60) == (0, fitted.summary["n_test"])
    assert read.summary["n_eval"] == fitted.summary["n_eval"]
    a, b = fitted.summary["mean-diff"]["best"], read.summary["mean-diff"]["best"]
    assert abs(a["success_rate"] - b["success_rate"]) <= 0.02 and a["success_rate"] >= 0.8
    with pytest.raises(InputError, match="no saved direction"):
        run_steering(h, rows, SteerOptions(**opts | {"layers": (1,)}, directions=str(tmp_path / "probes")))
