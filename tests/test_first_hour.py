"""What a new user meets first: a bad --model fails at once with one line and writes nothing."""

import os
import stat
import time

import pytest

from conftest import run_cli


@pytest.mark.parametrize("model, message", [
    ("organsim", "unknown model 'organsim' (did you mean 'organism'?)"),
    ("smollm2-135", "did you mean 'smollm2-135m'?"),
    ("./no/such/model", "no such folder or file './no/such/model'"),
    ("Qwen/Qwen2.5-0.5B", "HF_HUB_OFFLINE=1"),
])
def test_bad_model_fails_fast_with_one_line_and_no_output(tmp_path, model, message):
    (tmp_path / "d.jsonl").write_text("")
    for args in (["bench", "--model", model, "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "b")],
                 ["patch", "--model", model, "--pairs", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "p")],
                 ["run", "--model", model, "--out", str(tmp_path / "r")]):
        t = time.time()
        proc = run_cli(*args)
        assert time.time() - t < 5, args
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # nothing written


def test_a_folder_that_is_not_a_model_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "config.json").write_text("{}")
    p = run_cli("run", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "X"))
    assert p.returncode == 2 and "has no config.json" in p.stderr and not (tmp_path / "X").exists()
    p = run_cli("run", "--model", str(tmp_path / "cfgonly"), "--out", str(tmp_path / "X"))
    assert p.returncode == 2 and "has no tokenizer" in p.stderr and not (tmp_path / "X").exists()


def test_version():
    from countlens import __version__

    p = run_cli("--version", check=True)
    assert p.stdout.strip() == f"countlens {__version__}"


def test_output_files_respect_the_umask(tmp_path):
    from countlens.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_lexicon_help_keeps_its_brackets():
    p = run_cli("lexicon", "--help", check=True)
    assert '{"categories": {name: [words]}, "noise": [words]}' in p.stdout


def test_n_larger_than_available_warns_with_the_reason(tmp_path):
    run_cli("data", "generate", "--n", "60", "--out", str(tmp_path / "d.jsonl"), check=True)
    p = run_cli("data", "pairs", "--data", str(tmp_path / "d.jsonl"), "--tokenizer", "organism", "--n", "1000",
                "--out", str(tmp_path / "p.jsonl"), "--json", check=True)
    import json

    got = json.loads(p.stdout)["pairs"]
    assert got < 1000 and f"warning: {got} of 1000 pairs asked" in p.stderr
    assert "cannot be the low side of a pair" in p.stderr
    p = run_cli("steer", "--data", str(tmp_path / "d.jsonl"), "--n", "100000", "--out", str(tmp_path / "s"),
                "--layers", "2", "--scales", "0,1", "--no-generate")
    assert "warning: --n 100000 asked" in p.stderr and "only 60 rows" in p.stderr


def test_n_clamped_warns_for_bench_acts_and_probe(tmp_path):
    """bench, acts and probe say on stderr when --n asks for more than there is, and run on what there is."""
    import json

    data = tmp_path / "d.jsonl"
    run_cli("data", "generate", "--n", "40", "--out", str(data), check=True)
    p = run_cli("bench", "--model", "organism", "--data", str(data), "--n", "500", "--mode", "score",
                "--out", str(tmp_path / "b"), "--no-figures", "--json", check=True)
    assert json.loads(p.stdout)["config"]["n"] == 40
    assert f"warning: --n 500 asked, but {data} holds only 40 rows; running on 40" in p.stderr
    p = run_cli("acts", "--model", "organism", "--data", str(data), "--n", "90", "--positions", "last",
                "--out", str(tmp_path / "a"), "--json", check=True)
    assert json.loads(p.stdout)["n_examples"] == 40
    assert f"warning: --n 90 asked, but {data} holds only 40 rows; running on 40" in p.stderr
    p = run_cli("probe", "--acts", str(tmp_path / "a"), "--n", "70", "--folds", "2", "--controls", "majority",
                "--out", str(tmp_path / "p"), "--no-figures", "--json", check=True)
    assert json.loads(p.stdout)["n_examples"] == 40
    assert f"warning: --n 70 asked, but {tmp_path / 'a'} holds only 40 examples; running on 40" in p.stderr
    # asking for no more than there is: no warning
    p = run_cli("acts", "--model", "organism", "--data", str(data), "--n", "40", "--positions", "last",
                "--out", str(tmp_path / "a"), "--json", check=True)
    assert "warning" not in p.stderr


@pytest.mark.parametrize("command, counts", [
    (["bench"], "first N rows of --data, in file order"),
    (["acts"], "first N rows of --data, in file order"),
    (["probe"], "first N examples"),
    (["steer"], "first N rows of --data, in file order"),
    (["patch"], "first N pairs of the pairs file"),
    (["data", "pairs"], "Pairs to build"),
    (["data", "validate"], "first N rows, in file order"),
    (["data", "generate"], "Number of rows to generate"),
])
def test_every_n_says_what_it_counts(command, counts):
    import re

    p = run_cli(*command, "--help", check=True)
    text = re.sub(r"[\s│|]+", " ", p.stdout)   # rich wraps the help in a box
    assert "--n" in text and counts in text, text


def test_steer_help_shows_its_default_scales():
    import re

    from countlens.interp.steering import DEFAULT_SCALES

    text = re.sub(r"[\s│|]+", "", run_cli("steer", "--help", check=True).stdout)   # no spaces, no box
    assert "default:" + ",".join(f"{x:g}" for x in DEFAULT_SCALES) + "]" in text
