"""The whole study end to end, its resumability, and the report in a real browser."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from countlens.study.config import build_config
from countlens.study.run import run_study

SMALL = {"data": {"n": 160}, "pairs": {"n": 12}, "bench": {"n": 40},
         "patch": {"sites": ["resid", "head"], "positions": "all", "batch_size": 8},
         "probes": {"n": 160, "folds": 3}, "steer": {"n": 160, "scales": [0.0, 1.0, 2.0]}}
SECTIONS = ["findings", "bench", "patch", "probes", "steer", "lens", "dla", "attention", "atp", "mechanism",
            "caveats", "run"]


def small_config(tmp_path, **extra):
    import yaml

    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(yaml.safe_dump(SMALL | extra))
    return cfg_file


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    cfg_file = small_config(tmp)
    out = tmp / "run"
    proc = run_cli("run", str(cfg_file), "--out", str(out), "--json", check=True)
    return out, json.loads(proc.stdout), cfg_file


def test_study_writes_every_section_with_real_numbers(study_dir):
    out, summary, _ = study_dir
    assert summary["skipped"] == [] and Path(summary["report"]).exists()
    for stage in ("data", "pairs", "bench", "patch", "probes", "steer", "analyses"):
        assert (out / stage / "stage.json").exists(), stage
    md = (out / "report.md").read_text()
    headings = ("## Findings", "1. How well", "2. Where is the count causally", "3. Where can the count",
                "4. Can we move", "5. Where is the count read out", "6. Which components write",
                "7. Which heads look", "8. Attribution patching", "9. Running counter", "What these numbers do not show",
                "What ran")
    assert [md.index(h) for h in headings] == sorted(md.index(h) for h in headings)  # findings first, what ran last
    assert "has not run" not in md
    bench = json.loads((out / "bench" / "generate" / "summary.json").read_text())["models"][0]
    assert f"{100 * bench['accuracy']:.1f}%" in md  # the number in the text comes from the result file
    patch = json.loads((out / "patch" / "summary.json").read_text())
    assert f"{patch['per_layer'][-1]['mean']:.2f}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    # self-contained: nothing loaded over the network
    assert not re.search(r"""(src|href)=['"](https?:)?//""", html)


def test_summaries_agree_with_the_ones_from_before_the_architecture_change(study_dir):
    from golden_check import check

    out, _, _ = study_dir
    assert check(out, "organism") == []


def test_findings_card_answers_with_numbers_from_the_stage_files(study_dir):
    """On the organism (count in layer 2's output at the answer position): the card names layer 2 and
    the answer position as where the count becomes causal, and every answer has its number."""
    from countlens.report.findings import findings

    out, _, _ = study_dir
    card = {f["section"]: f["answer"] for f in findings(out)}
    assert card["patch"].startswith("from layer 2 at the answer position")
    patch = json.loads((out / "patch" / "summary.json").read_text())
    assert f"{patch['per_layer'][3]['mean']:.2f}" in card["patch"]
    assert card["bench"].startswith("yes, above chance")
    lens = json.loads((out / "analyses" / "lens" / "summary.json").read_text())
    assert lens["first_layer_90"] == 3 and card["lens"].startswith("from layer 3")  # the last block reads it out
    assert abs(lens["per_layer"][-1]["accuracy"] - lens["own"]["accuracy"]) < 1e-9
    dla = json.loads((out / "analyses" / "dla" / "summary.json").read_text())
    assert dla["max_abs_sum_error"] < 1e-4 and "mlp.3" in card["dla"]
    atp = {r["site"]: r for r in json.loads((out / "analyses" / "atp" / "summary.json").read_text())["agreement"]}
    assert atp["resid"]["spearman"] >= 0.8  # AtP ranks the resid grid like exact patching (pair x cell)
    assert card["steer"].startswith("yes") and card["mechanism"].split(" (")[0] in (
        "running counter", "parallel aggregation", "inconclusive")
    cells = json.loads((out / "patch" / "summary.json").read_text())["cells"]
    assert cells["n_cells"] > 0 and 0 < cells["significant"] <= cells["n_cells"]


def test_report_reads_typed_summaries_so_a_renamed_key_is_an_error_not_n_a(study_dir, tmp_path):
    """Every summary the study wrote validates against its schema; renaming a key the report reads
    fails with one line naming the file and the field (before: the report printed "n/a"), and a stage
    refuses to write a summary that lacks one."""
    from countlens.errors import InputError
    from countlens.report.html import build_blocks
    from countlens.study.config import StudyConfig
    from countlens.summaries import (AtPSummary, AttentionSummary, DataSummary, DLASummary, LensSummary,
                                     ModelSummary, PatchSummary, ProbeSummary, SteerSummary)

    out, _, _ = study_dir
    schemas = {"data": DataSummary, "patch": PatchSummary, "probes": ProbeSummary, "steer": SteerSummary,
               "analyses/lens": LensSummary, "analyses/dla": DLASummary, "analyses/attention": AttentionSummary,
               "analyses/atp": AtPSummary}
    for rel, schema in schemas.items():
        assert schema.read(out / rel / "summary.json") is not None, rel
    steer = SteerSummary.read(out / "steer" / "summary.json")
    assert list(steer.vectors()) == ["mean-diff", "one-more", "probe"] and steer.best == steer.mean_diff.best
    assert ModelSummary.read(out / "model.json").n_layers == 4

    run = tmp_path / "run"
    shutil.copytree(out, run)
    cfg = StudyConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text()))
    build_blocks(run, cfg)  # the copy renders
    f = run / "patch" / "summary.json"
    s = json.loads(f.read_text())
    s["kept"] = s.pop("kept_pairs")
    f.write_text(json.dumps(s))
    with pytest.raises(InputError) as e:
        build_blocks(run, cfg)
    assert str(e.value).startswith(f"{f}: field 'kept_pairs': field required") and "\n" not in str(e.value)
    with pytest.raises(InputError, match="field 'per_layer.0.mean'"):
        bad = json.loads((out / "patch" / "summary.json").read_text())
        del bad["per_layer"][0]["mean"]
        PatchSummary.check(bad)


def test_rerun_skips_finished_stages_and_force_reruns_one(study_dir):
    out, _, cfg_file = study_dir
    proc = run_cli("run", str(cfg_file), "--out", str(out), "--json", "--force", "steer", check=True)
    s = json.loads(proc.stdout)
    assert set(s["skipped"]) == {"data", "pairs", "bench", "patch", "probes", "analyses"}
    assert set(s["timings"]) == {"steer", "report"}


def test_every_stage_result_has_a_frame_and_figures(study_dir, tmp_path):
    """run_study's stages (fresh or read back from their files) all have .to_frame(), and .plot() where
    there is something to plot; the frames hold the numbers of the stages' own files."""
    import pandas as pd

    from countlens.study.results import load_stage
    from countlens.study.run import STAGES

    out, _, cfg_file = study_dir
    res = run_study(build_config(cfg_file), out, force=("data", "pairs", "bench"), progress=False)
    assert set(res.stages) == set(STAGES) and set(res.skipped) == {"patch", "probes", "steer", "analyses"}
    frames = {name: r.to_frame() for name, r in res.stages.items()}
    assert all(isinstance(f, pd.DataFrame) and len(f) for f in frames.values()), {k: len(f) for k, f in frames.items()}
    data = json.loads((out / "data" / "summary.json").read_text())
    assert len(frames["data"]) == data["rows"] == 160
    assert {str(k): int(v) for k, v in frames["data"].answer.value_counts().items()} == \
        {str(k): v for k, v in data["by_count"].items()}
    pairs = frames["pairs"]
    assert len(pairs) == res.stages["pairs"].summary["pairs"] and (pairs.n_high == pairs.n_low + 1).all()
    bench = frames["bench"].set_index("mode")
    for mode in ("generate", "score"):
        m = json.loads((out / "bench" / mode / "summary.json").read_text())["models"][0]
        assert bench.loc[mode, "accuracy"] == m["accuracy"] and bench.loc[mode, "ci_low"] == m["ci_low"]
    assert set(frames["patch"].site) == {"resid", "head"} and "success" in frames["steer"]
    head = frames["report"].set_index("quantity")
    probes = json.loads((out / "probes" / "summary.json").read_text())
    acc = head.loc["accuracy (last position)"]
    assert list(acc.value) == [e["accuracy"] for e in probes["per_layer"]]
    assert head.loc["accuracy (generate)", "value"] == bench.loc["generate", "accuracy"]
    # figures
    assert [p.name for p in res.stages["data"].plot(tmp_path)] == ["data_balance.png"]
    assert [p.name for p in res.stages["pairs"].plot(tmp_path)] == ["pairs_by_n.png"]
    assert set(res.stages["bench"].plot(tmp_path / "bench")) == {"generate", "score"}
    assert (tmp_path / "bench" / "score" / "accuracy_by_count.png").exists()
    an = res.stages["analyses"]
    assert set(an.results) == {"lens", "dla", "attention", "atp"} and list(frames["analyses"].analysis) == \
        ["lens", "dla", "attention", "atp"]
    assert frames["analyses"].set_index("analysis").loc["lens", "value"] == an["lens"].summary["first_layer_90"]
    drawn = an.plot(tmp_path / "an")
    assert [p.name for p in drawn["lens"]][:2] == ["lens_vs_probe.png", "lens_heatmap.png"] and drawn["dla"]
    for name in ("patch", "probes", "steer"):
        figs = res.stages[name].plot(tmp_path / name)
        assert figs and all(Path(p).stat().st_size > 1000 for p in (figs.values() if isinstance(figs, dict)
                                                                       else figs)), name
    # read back from the files: the same frames as the fresh results
    for name in ("data", "pairs", "bench"):
        pd.testing.assert_frame_equal(load_stage(out, name).to_frame(), frames[name])


def test_report_captions_intervals_and_wording(study_dir):
    """Captions say what each figure shows and in which mode; intervals are named; no '-0.00'."""
    from countlens.report.html import _num, _pct

    out, _, _ = study_dir
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(caps) >= 10 and len(caps) == len(set(caps)), caps          # no two figures share a caption
    gen, score = [c for c in caps if "generate mode" in c], [c for c in caps if "score mode" in c]
    assert len(gen) == len(score) >= 2
    assert all(len(c.split()) >= 8 for c in caps), caps                   # a sentence, not a file name
    assert not [c for c in caps if c.split(" (")[0] in ("accuracy", "accuracy by count", "confusion organism")]
    assert "bench/generate/accuracy.png" not in (out / "report.md").read_text()   # one model: no single-bar chart
    # the "What ran" table has a real header row, and no table has an empty one
    assert re.search(r"<section id='run'><h2>What ran</h2>\n<table><tr><th>setting</th><th>value</th></tr>", html)
    assert "<th></th>" not in html and "<tr></tr>" not in html
    assert not re.search(r"-0\.0+(?![0-9])", html)                         # no "-0.00" or "-0.0%"
    assert _num(-0.001) == "0.00" and _pct(-0.00001) == "0.0%" and _pct(-0.02) == "-2.0%"
    assert "moves the answer from" not in html
    assert html.count("Wilson 95 % interval") >= 5 and "bootstrap 95 % CI" in html


def test_readme_numbers_script_prints_the_study_table_and_updates_only_its_block(study_dir, tmp_path):
    import sys

    out, _, _ = study_dir
    script = ROOT / "benchmarks" / "readme_numbers.py"
    p = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, check=True)
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    bench = json.loads((out / "bench" / "generate" / "summary.json").read_text())["models"][0]
    patch = json.loads((out / "patch" / "summary.json").read_text())
    probes = json.loads((out / "probes" / "summary.json").read_text())
    steer = json.loads((out / "steer" / "summary.json").read_text())["best"]
    assert [r.split(" | ")[0] for r in rows] == [
        "| benchmark (40 examples)", f"| patching ({patch['kept_pairs']} pairs, resid, answer position, denoise)",
        "| probes (last position, 3-fold, 160 examples)", "| steering N -> N+1"]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    assert f"{pct(bench['accuracy'])} % [{pct(bench['ci_low'])}, {pct(bench['ci_high'])}]" in rows[0]
    assert f"{patch['per_layer'][-1]['mean']:.2f}" in rows[1]
    for e in probes["per_layer"]:
        assert f"{e['layer']} {pct(e['accuracy'])} %" in rows[2]
    assert f"**{pct(steer['success_rate'])} % [{pct(steer['ci_low'])}, {pct(steer['ci_high'])}]**" in rows[3]
    # --check fails on a README with other numbers; --update rewrites only the marked block
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme.write_text(original)
    run = lambda *a: subprocess.run([sys.executable, str(script), str(out), "--readme", str(readme), *a],  # noqa: E731
                                    capture_output=True, text=True)
    assert run("--check").returncode == 1
    assert run("--update").returncode == 0
    new = readme.read_text()
    start, end = "<!-- readme-numbers:start -->", "<!-- readme-numbers:end -->"
    assert new.split(start)[0] == original.split(start)[0] and new.split(end)[1] == original.split(end)[1]
    assert all(r in new for r in rows) and run("--check").returncode == 0


def test_interrupted_run_resumes_without_redoing_finished_stages(tmp_path):
    cfg = build_config(small_config(tmp_path), bench={"n": 20, "modes": ["score"]},  # resuming is the point: small
                       patch={"sites": ["resid"], "positions": "last", "generate": False},
                       probes={"n": 60, "folds": 2}, steer={"n": 60, "scales": [0.0, 1.0], "generate": False},
                       analyses={"n": 40, "run": ["lens"]})
    out = tmp_path / "run"
    import countlens.study.run as runmod

    calls = []
    original = runmod.Study.patch

    def boom(self, d):
        calls.append("patch")
        raise KeyboardInterrupt

    runmod.Study.patch = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, out, progress=False)
    finally:
        runmod.Study.patch = original
    done = json.loads((out / "bench" / "stage.json").read_text())
    assert not (out / "patch" / "stage.json").exists()
    result = run_study(cfg, out, progress=False)
    assert result.skipped == ["data", "pairs", "bench"]
    assert json.loads((out / "bench" / "stage.json").read_text()) == done
    assert (out / "patch" / "stage.json").exists() and result.report.exists()
    assert set(result.stages["patch"].to_frame().site) == {"resid"}


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  n: 100\npatch:\n  sites: [resid, nope]\n")
    proc = run_cli("run", str(bad), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "bad.yaml:4" in proc.stderr and "patch.sites" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text, line, field", [
    ("data:\n  n: 100\npach:\n  sites: [resid]\n", 3, "pach"),            # top-level typo, a mapping under it
    ("data:\n  n: 100\nmodle: organism\n", 3, "modle"),                    # top-level typo, a scalar
    ("data:\n  n: 100\n  sed: 3\n", 3, "data.sed"),                       # nested typo
    ("patch:\n  sites:\n    - resid\n    - nope\n", 4, "patch.sites.1"),  # the bad list element
])
def test_config_typos_name_their_own_line(tmp_path, text, line, field):
    from countlens.errors import InputError

    bad = tmp_path / "bad_top.yaml"
    bad.write_text(text)
    with pytest.raises(InputError) as e:
        build_config(bad)
    assert e.value.line == line and e.value.field == field
    assert f"bad_top.yaml:{line}:" in str(e.value)


def test_study_on_a_folder_without_chat_template_and_a_custom_template(tmp_path, tiny_models):
    """Any HF folder: raw prompts (no chat template) and a user template file, end to end."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tpl = tmp_path / "tpl.yaml"
    tpl.write_text('prompt: "List: {words}\\nType: {category}\\nAnswer: "\nseparator: " "\n')
    cfg_file = small_config(tmp_path, patch={"sites": ["resid"], "positions": "last", "filter": "none",
                                             "generate": False})
    out = tmp_path / "run"
    proc = run_cli("run", str(cfg_file), "--model", str(folder), "--template", str(tpl), "--out", str(out),
                   "--json", check=True)
    s = json.loads(proc.stdout)
    assert Path(s["report"]).exists()
    row = json.loads((out / "data" / "examples.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("List: ") and row["template"] == "tpl"
    assert "has not run" not in (out / "report.md").read_text()


def test_report_renders_in_headless_chromium(study_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    out, _, _ = study_dir
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for sid in SECTIONS:
        assert f'id="{sid}' in dom or f"id='{sid}" in dom, sid
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1100,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    hist = img.histogram()
    assert max(hist) / sum(hist) < 0.97  # not blank
    docs = ROOT / "docs" / "report-screenshot.png"
    shutil.copy(shot, docs)  # README shows the screenshot this test made


def test_compare_puts_two_studies_side_by_side(study_dir, tmp_path):
    """`countlens compare` reads finished studies only; its numbers are the studies' own."""
    out, _, _ = study_dir
    proc = run_cli("compare", str(out), str(out), "--label", "a", "--label", "b", "--out", str(tmp_path / "cmp"),
                   "--json", check=True)
    summary = json.loads(proc.stdout)
    assert [r["label"] for r in summary["runs"]] == ["a", "b"]
    bench = json.loads((out / "bench" / "generate" / "summary.json").read_text())["models"][0]
    row = summary["table"]["benchmark accuracy (generate), %"]
    assert row["a"] == row["b"] and row["a"].startswith(f"{100 * bench['accuracy']:.1f} [")
    probes = json.loads((out / "probes" / "summary.json").read_text())
    best = max(probes["per_layer"], key=lambda r: r["accuracy"])
    assert f"{100 * best['accuracy']:.1f} (layer {best['layer']}" in summary["table"]["probe accuracy at the answer, best layer, %"]["a"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert "benchmark accuracy" in (tmp_path / "cmp" / "compare.md").read_text()
    bad = run_cli("compare", str(tmp_path), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "not a study folder" in bad.stderr and not (tmp_path / "x").exists()


def test_deep_quick_study_steers_along_the_probes_directions_on_examples_they_did_not_see(tmp_path):
    """On a deep model the quick preset's steering layers are among the probes' layers, so steering
    reads the probes' saved directions (no second capture and fit) and is evaluated on the examples
    after the probes' own; when the data has too few of those, or a layer is missing, it fits its own."""
    from countlens.study.config import fit_to_model
    from countlens.study.run import Study

    cfg = fit_to_model(build_config(preset="quick"), 30)
    assert set(cfg.steer.layers) <= set(cfg.probes.layers) and len(cfg.steer.layers) == 8
    assert {"emb", "29"} <= set(cfg.steer.layers)
    study = Study(cfg, tmp_path, log=lambda m: None)
    assert study._probe_directions(600) is None                       # the probes saved none
    (tmp_path / "probes" / "directions" / "resid-last").mkdir(parents=True)
    held = cfg.steer.n - int(cfg.steer.n * 0.5)
    assert study._probe_directions(cfg.probes.n + held) == str(tmp_path / "probes")
    assert study._probe_directions(cfg.probes.n + held - 1) is None   # too few unseen examples
    other = cfg.model_copy(update={"steer": cfg.steer.model_copy(update={"layers": ["emb", "1"]})})
    assert Study(other, tmp_path, log=lambda m: None)._probe_directions(10_000) is None
    changed = fit_to_model(build_config(preset="quick", probes={"n": 200}), 30)
    assert changed.stage_hash("steer") != cfg.stage_hash("steer")     # steer reruns when the probes change
