"""The README's "Python API" section runs as written, on the organism."""

import re

import pandas as pd

from conftest import ROOT


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_section_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks(readme_section("Python API"))
    assert blocks, "the README's Python API section has no python code block"
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme"}
    for code in blocks:
        exec(compile(code, "README.md (Python API)", "exec"), ns)  # noqa: S102
    # what the snippet built is what it says it is
    assert ns["patch"].to_frame().position.min() < -1                   # positions="all"
    assert ns["probes"].summary["n_examples"] == 200
    assert set(ns["steer"].to_frame().scale) == {0.0, 1.0, 2.0}
    study = ns["study"]
    assert set(study.stages) == {"data", "pairs", "bench", "patch", "probes", "steer", "analyses", "report"}
    an = ns["an"]
    assert set(an.results) == {"lens", "dla"} and an["lens"].summary["n_rows"] == 60
    assert (tmp_path / "figs" / "lens_heatmap.png").exists() and (tmp_path / "an" / "dla" / "table.parquet").exists()
    for name, result in study.stages.items():
        frame = result.to_frame()
        assert isinstance(frame, pd.DataFrame) and len(frame) > 0, name
    assert (tmp_path / "runs" / "study" / "report.html").exists()
    assert (tmp_path / "figs" / "data_balance.png").exists() and (tmp_path / "figs" / "patch_per_layer.png").exists()
