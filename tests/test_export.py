"""The exported lm-eval tasks reproduce `countlens bench` on the organism, row by row, through lm-eval's
own `hf` model, run from another working directory."""

import json
from pathlib import Path

import pytest

from countlens.bench.export import export_task
from countlens.bench.runner import run_bench
from countlens.data.generate import generate_dataset
from countlens.models.registry import organism_path

N = 36


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "d.jsonl"
    generate_dataset(data, N, seed=11)
    summary = export_task(data, root / "task", "lm-eval", model="organism")
    return root, data, summary


def _lm_eval(task_dir, name, monkeypatch, elsewhere):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(elsewhere)   # the task's paths do not depend on where lm_eval starts
    chat = "--apply_chat_template" in json.loads((task_dir / "countlens_task.json").read_text())["commands"][name]
    res = simple_evaluate(model="hf", model_args=f"pretrained={organism_path()},dtype=float32", tasks=[name],
                          task_manager=TaskManager(include_path=str(task_dir)), batch_size=8, device="cpu",
                          log_samples=True, apply_chat_template=chat)
    return res["results"][name], sorted(res["samples"][name], key=lambda s: s["doc"]["id"])


def test_export_writes_absolute_paths_and_the_command_lines(task):
    root, data, s = task
    from countlens.models.hub import load_tokenizer
    from countlens.models.prompts import resolve_format

    fmt = resolve_format(load_tokenizer("organism"), "auto")   # what `countlens bench` uses
    assert s["rows"] == N and s["prompt_format"] == fmt and s["k_max"] == 5
    text = (root / "task" / "countlens_generate.yaml").read_text()
    assert str((root / "task" / "countlens.jsonl").resolve()) in text and "!function countlens_utils.lenient" in text
    assert "--include_path" in s["commands"]["countlens_generate"]
    assert ("--apply_chat_template" in s["commands"]["countlens_generate"]) == (fmt == "chat")
    first = json.loads((root / "task" / "countlens.jsonl").read_text().splitlines()[0])
    assert first["choices"] == ["0", "1", "2", "3", "4", "5"] and first["target"] == str(first["answer"])


def test_lm_eval_generate_task_equals_countlens_bench_generate(task, tmp_path, monkeypatch):
    root, data, s = task
    bench = run_bench(["organism"], data, tmp_path / "b", mode="generate", figures=False, progress=False)
    ours = _records(tmp_path / "b")
    results, samples = _lm_eval(root / "task", "countlens_generate", monkeypatch, tmp_path)
    assert len(samples) == 2 * N   # one sample per row and filter
    for smp in samples:   # the same greedy reply for every row, and the same parse
        rec = ours[smp["doc"]["id"]]
        assert smp["resps"][0][0].strip() == rec["completion"].strip(), smp["doc"]["id"]
        want = rec["pred_strict"] if smp["filter"] == "strict" else rec["pred"]
        assert smp["filtered_resps"][0] == ("[invalid]" if want is None or want != want else str(int(want)))
    m = bench.models[0]
    assert results["exact_match,strict"] == pytest.approx(m.accuracy_strict, abs=1e-9)
    assert results["exact_match,lenient"] == pytest.approx(m.accuracy, abs=1e-9)


def test_lm_eval_score_task_equals_countlens_bench_score(task, tmp_path, monkeypatch):
    root, data, s = task
    bench = run_bench(["organism"], data, tmp_path / "b", mode="score", figures=False, progress=False)
    ours = _records(tmp_path / "b")
    results, samples = _lm_eval(root / "task", "countlens_score", monkeypatch, tmp_path)
    assert len(samples) == N
    for smp in samples:   # the same argmax over P(0..K) for every row
        lls = [r[0][0] for r in smp["resps"]]
        assert max(range(len(lls)), key=lls.__getitem__) == ours[smp["doc"]["id"]]["pred"], smp["doc"]["id"]
    assert results["acc,none"] == pytest.approx(bench.models[0].accuracy, abs=1e-9)


def _records(folder) -> dict:
    """countlens bench's records by example id."""
    import pandas as pd

    return {r["example_id"]: r for r in pd.read_parquet(folder / "records.parquet").to_dict("records")}


def test_inspect_task_equals_countlens_bench_generate(task, tmp_path):
    """The Inspect task file, run by the command line the export prints (`inspect eval ... -M
    do_sample=False` through Inspect's own `hf/` provider). In its own process: after Inspect's hf
    provider has run, torch's two-thread forwards in this process took 3-4x as long (measured), which
    slowed every later test."""
    import os
    import shlex
    import subprocess
    import sys

    from inspect_ai.log import list_eval_logs, read_eval_log

    root, data, _ = task
    s = export_task(data, root / "inspect", "inspect", model="organism")
    command = s["commands"]["countlens_count"]
    assert "-M do_sample=False" in command and f"hf/{organism_path()}" in command
    bench = run_bench(["organism"], data, tmp_path / "b", mode="generate", figures=False, progress=False)
    ours = _records(tmp_path / "b")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = shlex.quote(str(tmp_path / "logs"))
    proc = subprocess.run(f"{command} --display none --log-dir {logs}", shell=True, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (info,) = list_eval_logs(str(tmp_path / "logs"))
    log = read_eval_log(info)
    assert log.status == "success" and len(log.samples) == N
    for smp in log.samples:
        assert smp.output.completion.strip() == ours[smp.id]["completion"].strip(), smp.id
    assert log.results.scores[0].metrics["accuracy"].value == pytest.approx(bench.models[0].accuracy_strict)


def test_export_cli_prints_the_commands_and_rejects_a_bad_format(task, tmp_path):
    from conftest import run_cli

    root, data, _ = task
    p = run_cli("data", "export", "--format", "lm-eval", "--data", str(data), "--n", "10", "--out",
                str(tmp_path / "t"), "--json", check=True)
    s = json.loads(p.stdout)
    assert s["rows"] == 10 and s["prompt_format"] == "as in the data"   # no --model: the rows' own prompts
    assert "--model hf --model_args pretrained=FOLDER,dtype=float32" in s["commands"]["countlens_score"]
    bad = run_cli("data", "export", "--format", "helm", "--data", str(data), "--out", str(tmp_path / "u"))
    assert bad.returncode == 2 and "format" in bad.stderr and not (tmp_path / "u").exists()
