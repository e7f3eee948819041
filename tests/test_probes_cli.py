"""`countlens acts` and `countlens probe` through the real console script: one JSON object on
stdout, files on disk, one-line errors with exit 2, and parallel workers equal to one process."""

import json

import pandas as pd

from conftest import run_cli
from countlens.data.generate import generate_dataset
from countlens.interp.probes import run_probes
from probe_helpers import tiny_model

PER_LAYER_KEYS = {"layer", "accuracy", "ci_low", "ci_high", "control_accuracy", "selectivity", "r2"}


def test_acts_then_probe_json_shape_files_and_figures(tmp_path):
    model = tiny_model(tmp_path / "model")
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 60, seed=9, max_len=7)
    proc = run_cli("acts", "--model", model, "--data", str(data), "--out", str(tmp_path / "acts"),
                   "--positions", "last,items,prefix", "--n", "50", "--json", check=True)
    s = json.loads(proc.stdout)
    assert len(proc.stdout.strip().splitlines()) == 1
    assert s["complete"] and s["n_examples"] == 50 and s["sites"] == ["resid.emb", "resid.0", "resid.1"]
    assert s["positions"] == ["last", "items", "prefix"]

    out = tmp_path / "probes"
    proc = run_cli("probe", "--acts", str(tmp_path / "acts"), "--out", str(out), "--n-boot", "100",
                   "--n-jobs", "2", "--json", check=True)
    assert len(proc.stdout.strip().splitlines()) == 1
    s = json.loads(proc.stdout)
    assert [r["layer"] for r in s["per_layer"]] == ["emb", 0, 1]
    for r in s["per_layer"]:
        assert PER_LAYER_KEYS <= set(r)
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert abs(r["selectivity"] - (r["accuracy"] - r["control_accuracy"])) < 1e-3
    assert set(s["input_baseline"]) >= {"accuracy", "ci_low", "ci_high", "r2"}
    assert 0 < s["majority"]["accuracy"] < 1
    rc = s["running_count"]
    # word 7 exists in only ~1/3 of the 50 lists: under 20 examples, that cell is left out
    assert rc["layers"] == ["emb", 0, 1] and rc["items"] == list(range(6)) and rc["n"][0] == 50
    assert len(rc["accuracy"]) == 3 and all(len(row) == 6 for row in rc["accuracy"])
    assert len(rc["r2"]) == 3 and len(rc["majority"]) == 6 and len(rc["input_baseline"]) == 6
    assert [r["layer"] for r in s["prefix"]] == ["emb", 0, 1]
    assert set(s["figures"]) == {"accuracy_by_layer", "running_count", "confusion"}
    for name in s["figures"]:
        assert (out / f"probe_{name}.png").exists()
    assert json.loads((out / "summary.json").read_text())["figures"] == s["figures"]
    assert (out / "directions" / "resid-last.pt").exists()
    # the two workers of the CLI gave exactly the numbers of one in-process run (last position: the
    # first cell, so its seeds are the same in both runs)
    one = run_probes(tmp_path / "acts", positions="last", n_boot=100, n_jobs=1, progress=False).to_frame()
    two = pd.read_parquet(out / "probes.parquet")
    two = two[two["position"] == "last"].reset_index(drop=True)
    assert len(one) > 20 and two.equals(one)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("probe", "--acts", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "activation store" in proc.stderr
    proc = run_cli("probe", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--acts" in proc.stderr
