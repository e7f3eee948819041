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
SECTIONS = ["run", "bench", "patch", "probes", "steer", "caveats"]


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
    for stage in ("data", "pairs", "bench", "patch", "probes", "steer"):
        assert (out / stage / "stage.json").exists(), stage
    md = (out / "report.md").read_text()
    for heading in ("What ran", "1. How well", "2. Where is the count causally", "3. Where can the count",
                    "4. Can we move", "What these numbers do not show"):
        assert heading in md
    assert "has not run" not in md
    bench = json.loads((out / "bench" / "generate" / "summary.json").read_text())["models"][0]
    assert f"{100 * bench['accuracy']:.1f}%" in md  # the number in the text comes from the result file
    patch = json.loads((out / "patch" / "summary.json").read_text())
    assert f"{patch['per_layer'][-1]['mean']:.2f}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    # self-contained: nothing loaded over the network
    assert not re.search(r"""(src|href)=['"](https?:)?//""", html)


def test_rerun_skips_finished_stages_and_force_reruns_one(study_dir):
    out, _, cfg_file = study_dir
    proc = run_cli("run", str(cfg_file), "--out", str(out), "--json", "--force", "steer", check=True)
    s = json.loads(proc.stdout)
    assert set(s["skipped"]) == {"data", "pairs", "bench", "patch", "probes"}
    assert set(s["timings"]) == {"steer", "report"}


def test_interrupted_run_resumes_without_redoing_finished_stages(tmp_path):
    cfg = build_config(small_config(tmp_path), bench={"n": 20, "modes": ["score"]})
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
    assert set(result.stages["patch"].to_frame().site) == {"resid", "head"}


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
