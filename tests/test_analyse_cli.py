"""`countlens analyse`: the four analyses from the command line, and its bad-input lines."""

import json

from conftest import run_cli


def test_analyse_writes_every_analysis_and_rejects_bad_input_before_loading(tmp_path):
    data, pairs = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    run_cli("data", "generate", "--n", "60", "--seed", "3", "--out", str(data), check=True)
    run_cli("data", "pairs", "--data", str(data), "--tokenizer", "organism", "--n", "6", "--out", str(pairs), check=True)
    run_cli("patch", "--pairs", str(pairs), "--out", str(tmp_path / "patch"), "--sites", "resid", "--positions", "all",
            "--json", check=True)
    out = tmp_path / "an"
    proc = run_cli("analyse", "--data", str(data), "--n", "40", "--pairs", str(pairs), "--patch", str(tmp_path / "patch"),
                   "--out", str(out), "--json", check=True)
    s = json.loads(proc.stdout)
    assert {"lens", "dla", "attention", "atp"} <= set(s)
    assert s["lens"]["n_rows"] == 40 and s["lens"]["first_layer_90"] == 3  # the organism's last block reads it out
    assert s["dla"]["max_abs_sum_error"] < 1e-4
    assert {r["site"] for r in s["atp"]["agreement"]} == {"resid", "all"}
    for name in ("lens", "dla", "attention", "atp"):
        assert (out / name / "summary.json").exists() and (out / name / "table.parquet").exists(), name
    assert (out / "lens" / "lens_heatmap.png").exists() and (out / "atp" / "atp_vs_exact.png").exists()
    for args, text in ((["--only", "lens,nope"], "unknown analyses ['nope']"), (["--only", "atp"], "needs --pairs")):
        bad = run_cli("analyse", "--data", str(data), "--out", str(tmp_path / "bad"), *args)
        assert bad.returncode == 2 and text in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
