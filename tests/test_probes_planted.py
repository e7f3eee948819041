"""Probes on synthetic activations with a planted linear count direction: the pipeline must find
that layer, and every control must stay at chance where nothing is planted."""

import numpy as np
import pytest

from countlens.errors import InputError
from countlens.interp.directions import Directions
from countlens.interp.probes import assign_folds, control_marks, run_probes
from countlens.interp.synthetic import synthetic_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    synthetic_store(root / "acts", n=300, d=16, n_layers=4, planted={2: 5.0},
                    positions=("last", "items", "prefix"), seed=1, max_len=6)
    res = run_probes(root / "acts", out=root / "out", n_boot=200, progress=False, n_jobs=1, figures=False)
    return root, res


def test_the_probe_finds_the_planted_layer_and_controls_stay_at_chance(planted):
    _, res = planted
    s = res.summary
    layers = [r["layer"] for r in s["per_layer"]]
    assert layers == ["emb", 0, 1, 2, 3]  # the embedding layer is its own row, first
    best = s["best_layer"]
    assert best["layer"] == 2
    assert best["accuracy"] >= 0.8 and best["ci_low"] <= best["accuracy"] <= best["ci_high"]
    assert best["r2"] >= 0.8
    chance = s["majority"]["accuracy"]
    control_chance = s["majority"]["control_accuracy"]
    for r in s["per_layer"]:
        # nothing about the words is in the features: the control task stays near its majority rate
        assert r["control_accuracy"] <= control_chance + 0.12, r
        assert r["shuffled_accuracy"] <= chance + 0.12, r
        if r["layer"] != 2:
            assert r["accuracy"] <= chance + 0.12, r
            assert r["r2"] <= 0.1, r
    assert best["selectivity"] >= 0.5 and best["selectivity_ci_low"] > 0.3
    # the input-only bag of words cannot do what the planted layer does
    assert s["input_baseline"]["accuracy"] < best["accuracy"] - 0.3
    assert s["input_baseline"]["control_accuracy"] is not None


def test_running_count_heatmap_lights_up_only_at_the_planted_layer(planted):
    _, res = planted
    rc = res.summary["running_count"]
    assert rc["layers"] == ["emb", 0, 1, 2, 3]
    assert rc["items"] == list(range(6)) and len(rc["n"]) == 6 and rc["n"][0] == 300
    r2 = np.array(rc["r2"], dtype=float)
    assert r2.shape == (5, 6)
    assert np.all(r2[3, 1:] > 0.8)  # words 2..6 at layer 2
    assert np.all(np.delete(r2, 3, axis=0) < 0.15)
    grid = res.running_count("accuracy")
    assert list(grid.index) == ["emb", "0", "1", "2", "3"] and grid.shape == (5, 6)
    # prefix rows carry no count: a final-count probe there is at chance at every layer
    for r in res.summary["prefix"]:
        assert r["accuracy"] <= res.summary["majority"]["accuracy"] + 0.12


def test_outputs_table_predictions_and_directions(planted):
    root, res = planted
    out = root / "out"
    for f in ("summary.json", "probes.parquet", "predictions.parquet", "directions/layout.json",
              "directions/resid-last.pt", "directions/resid-items/means.npy"):
        assert (out / f).exists(), f
    t = res.to_frame()
    assert {"site", "layer", "position", "item", "probe", "metric", "value", "ci_low", "ci_high", "n"} <= set(t)
    assert {"linear", "majority", "input_bow"} == set(t["probe"])
    d = Directions.load(out, "resid", "last")
    assert d.layers == ["emb", 0, 1, 2, 3]
    k = len(d.arrays["classes"])
    assert d.arrays["means"].shape == (5, k, 16) and d.arrays["probe_coef"].shape == (5, k, 16)
    # the saved difference-of-means direction at the planted layer points along the planted one
    store = __import__("countlens.interp.store", fromlist=["ActStore"]).ActStore.open(root / "acts")
    rows = store.rows("last")
    x = store.features("resid.2", rows["row"].to_numpy())
    y = rows["final_count"].to_numpy()
    proj = x @ d.one_more(2, unit=True)
    assert np.corrcoef(proj, y)[0, 1] > 0.9
    v = d.mean_diff(2, 1, 3)
    assert np.allclose(v, d.arrays["means"][3, 3] - d.arrays["means"][3, 1])
    # raw-unit probe weights reproduce the probe: argmax of x @ coef.T + b is mostly right
    logits = x @ d.arrays["probe_coef"][3].T + d.arrays["probe_intercept"][3]
    assert (d.arrays["classes"][logits.argmax(1)] == y).mean() > 0.85
    cm, classes, layer = res.confusion()
    assert layer == "2" and cm.sum() == 300 and cm.shape == (len(classes), len(classes))


def test_splits_hold_out_whole_groups(planted):
    root, _ = planted
    from countlens.interp.store import ActStore

    ex = ActStore.open(root / "acts").examples
    fold = assign_folds(ex, "category", 5, seed=0)
    for f in range(5):
        assert not set(ex["category"][fold == f]) & set(ex["category"][fold != f])
    fold = assign_folds(ex, "length", 1, test_size=0.34)
    assert ex["list_length"][fold == 0].min() > ex["list_length"][fold == -1].max()  # longest lists held out
    fold = assign_folds(ex, "random", 5)
    assert np.bincount(fold).min() >= 300 // 5 - 1
    with pytest.raises(InputError):
        assign_folds(ex, "nope")
    res = run_probes(root / "acts", split="category", positions="last", controls=("majority",), n_boot=100,
                     progress=False, n_jobs=1)
    assert res.summary["best_layer"]["layer"] == 2 and res.summary["best_layer"]["accuracy"] > 0.8


def test_control_task_is_a_fixed_membership_per_word_type(planted):
    root, _ = planted
    from countlens.interp.store import ActStore

    ex = ActStore.open(root / "acts").examples
    marks = control_marks(ex, seed=0)
    seen = {}
    for words, m in zip(ex["words"], marks):
        for w, flag in zip(words, m):
            assert seen.setdefault(w, flag) == flag
    rate = np.mean(list(seen.values()))
    match_rate = sum(map(sum, ex["match"])) / sum(map(len, ex["words"]))
    assert abs(rate - match_rate) < 0.1



def test_fold_gram_ridge_equals_direct_ridge():
    from countlens.interp.probe_fit import ridge, ridge_from_gram, standardise

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 12)) * rng.uniform(0.5, 30, 12) + rng.uniform(-50, 50, 12)).astype(np.float32)
    y = rng.integers(0, 6, 200)
    te = np.arange(200) % 5 == 2
    xs_tr, xs_te, mu, sd = standardise(x[~te], x[te])
    w, b = ridge(xs_tr, y[~te], 12.0)
    g = x.mean(0)
    xc = x - g
    gram_tr = (xc.T @ xc).astype(np.float64) - (xc[te].T @ xc[te]).astype(np.float64)
    w2, b2 = ridge_from_gram(gram_tr, int((~te).sum()), (mu - g).astype(np.float64), sd.astype(np.float64),
                             xs_tr, y[~te], 12.0)
    np.testing.assert_allclose(xs_te @ w2 + b2, xs_te @ w + b, rtol=1e-4, atol=1e-4)


def test_fit_writes_nothing_and_save_writes_what_run_probes_writes(planted, tmp_path):
    """The stage's compute step reads the store only; saving its result gives run_probes' files, with
    the same table and the same directions the fit kept in memory."""
    import pandas as pd

    from countlens.interp.probes import fit_probes, save_probes

    root, ran = planted
    before = sorted(p for p in root.rglob("*"))
    res = fit_probes(root / "acts", n_boot=200, progress=False, n_jobs=1)
    assert sorted(p for p in root.rglob("*")) == before and res.out is None and res.files == {}
    assert {(d.kind, d.position) for d in res.directions} == {("resid", "last"), ("resid", "items")}
    save_probes(res, tmp_path / "out", figures=False)
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert names(tmp_path / "out") == names(root / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "probes.parquet"), ran.table)
    again = Directions.load(tmp_path / "out" / "directions", "resid", "last")
    planted_dir = next(d for d in res.directions if d.position == "last")
    np.testing.assert_array_equal(again.mean_diff(2, 1, 2), planted_dir.mean_diff(2, 1, 2))


def test_a_relative_store_path_after_chdir_reaches_workers_started_elsewhere(planted, tmp_path, monkeypatch):
    """loky keeps its worker processes between calls, each in the folder it started in: a store given
    relative to the caller's folder must still be found (the README's snippet after a chdir)."""
    import shutil

    from countlens.interp.probes import fit_probes

    root, res = planted
    fit_probes(root / "acts", n_boot=50, progress=False, n_jobs=2, directions=False)   # workers start here
    shutil.copytree(root / "acts", tmp_path / "acts")
    monkeypatch.chdir(tmp_path)
    again = fit_probes("acts", n_boot=50, progress=False, n_jobs=2, directions=False)
    assert again.summary["best_layer"]["layer"] == 2 and again.summary["n_examples"] == res.summary["n_examples"]
