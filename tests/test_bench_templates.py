"""Prompt sensitivity: `--template` repeated renders each row with each template; every model x
template is benchmarked and resumable (the template is in the key), and the summary compares the
templates on the same examples (Wilson interval per template, McNemar exact between them)."""

import json

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from countlens.backends.base import Completion, GenSettings
from countlens.bench import stats
from countlens.bench.data import BenchExample, load_examples, render
from countlens.bench.display import tables
from countlens.bench.metrics import template_table
from countlens.bench.records import from_completion, key_fields, record_key
from countlens.bench.runner import run_bench
from countlens.bench.store import RecordStore
from countlens.cli import app
from countlens.data.generate import generate_dataset
from countlens.data.templates import load_template
from countlens.errors import InputError
from countlens.models.registry import organism_path
from countlens.stats import wilson_ci

from bench_support import write_rows

needs_organism = pytest.mark.skipif(not (organism_path() / "config.json").exists(),
                                    reason="the shipped organism's weights are not in place yet")


def _rec(ex, text, template):
    f = key_fields({"backend": "x", "model": "m"}, ex, "generate", GenSettings(), None, template)
    return from_completion("m", ex, f, Completion(text=text, input_tokens=1, output_tokens=1))


def test_template_table_numbers_on_a_known_table():
    """10 examples: 8 right under A, 3 under B; A only: 6, B only: 1 -> McNemar p = 2 x 8/128."""
    exs = [BenchExample(id=f"e{i}", prompt=f"p{i}", answer=2) for i in range(10)]
    a = ["(2)"] * 8 + ["(1)"] * 2
    b = ["(2)", "(2)", "(3)", "(3)", "(3)", "(3)", "(3)", "(3)", "(2)", "x"]
    t = template_table("m", {"A": [_rec(e, x, "A") for e, x in zip(exs, a)],
                             "B": [_rec(e, x, "B") for e, x in zip(exs, b)]})
    ra, rb = t.templates
    assert (ra.template, ra.n, ra.accuracy, rb.accuracy, rb.parse_error_rate) == ("A", 10, 0.8, 0.3, 0.1)
    assert (ra.ci_low, ra.ci_high) == pytest.approx(wilson_ci(8, 10), abs=1e-6)
    assert (rb.ci_low, rb.ci_high) == pytest.approx((0.1078, 0.6032), abs=1e-4)   # Wilson 3/10
    (p,) = t.pairs
    assert (p.template_a, p.template_b, p.n, p.mcnemar_b, p.mcnemar_c) == ("A", "B", 10, 6, 1)
    assert p.mcnemar_p == pytest.approx(0.125) == p.mcnemar_p_holm
    assert p.difference == pytest.approx(0.5) and t.spread == pytest.approx(0.5)


def test_key_includes_the_template_only_when_given():
    ex = BenchExample(id="e0", prompt="same prompt", answer=1)
    ident = {"backend": "hf", "model": "m"}
    plain = key_fields(ident, ex, "score", GenSettings(), 5)
    assert "template" not in plain    # runs without --template keep their keys (and resume)
    keys = {record_key(plain), *(record_key(key_fields(ident, ex, "score", GenSettings(), 5, t))
                                 for t in ("seed-v1", "short"))}
    assert len(keys) == 3


def test_render_and_input_errors(tmp_path):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 6, seed=1)
    exs = load_examples(data)
    same = render(exs, "seed-v1")
    assert [e.prompt for e in same] == [e.prompt for e in exs]   # the data was generated with seed-v1
    short = render(exs, "short")
    assert [e.id for e in short] == [e.id for e in exs] and short[0].prompt.startswith("Type: ")
    assert short[0].prompt == load_template("short").render(exs[0].category, list(exs[0].word_list))
    ext = write_rows(tmp_path / "ext.jsonl", [{"prompt": "How many?", "answer": 2}])
    with pytest.raises(InputError, match="needs rows with 'category' and 'word_list'") as e:
        run_bench(["organism"], ext, tmp_path / "o", mode="score", templates=["short"], progress=False)
    assert e.value.line == 1
    with pytest.raises(InputError, match="given twice"):
        run_bench(["organism"], data, tmp_path / "o", mode="score", templates=["short", "short"], progress=False)
    with pytest.raises(InputError, match="no built-in template or file named 'nope'"):
        run_bench(["organism"], data, tmp_path / "o", mode="score", templates=["nope"], progress=False)


@needs_organism
def test_organism_two_templates_score_mode_cli_and_resume(tmp_path):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 30, seed=5)
    out = tmp_path / "o"
    s = run_bench(["organism"], data, out, n=30, mode="score", templates=["seed-v1", "short"], progress=False)
    df = pd.read_parquet(out / "records.parquet")
    assert len(df) == 60 and df.key.nunique() == 60
    assert df.groupby("template").size().to_dict() == {"seed-v1": 30, "short": 30}
    assert (df.key_fields.map(lambda k: json.loads(k)["template"]) == df.template).all()
    # one `models` entry per model x template, each with its Wilson interval
    assert [(m.model, m.template, m.n) for m in s.models] == [("organism", "seed-v1", 30), ("organism", "short", 30)]
    sec = s.templates
    assert sec.names == ["seed-v1", "short"] and sec.interval == "wilson 95%" and s.config["interval"] == "wilson 95%"
    (t,) = sec.models
    assert t.model == "organism" and [r.template for r in t.templates] == ["seed-v1", "short"]
    right = {name: g.set_index("example_id").correct for name, g in df.groupby("template")}
    for r in t.templates:
        k = int(right[r.template].sum())
        assert r.n == 30 and r.accuracy == pytest.approx(k / 30, abs=1e-6)
        assert (r.ci_low, r.ci_high) == pytest.approx(wilson_ci(k, 30), abs=1e-6)
        assert r.ci_low < r.accuracy or r.accuracy == 0
    assert t.templates[0].accuracy >= 0.9          # seed-v1 is the organism's native template
    assert t.templates[0].ci_low < 1.0             # no collapsed [100, 100] interval even at 30/30
    (p,) = t.pairs
    a, b = right["seed-v1"], right["short"].loc[right["seed-v1"].index]
    assert (p.n, p.mcnemar_b, p.mcnemar_c) == (30, int((a & ~b).sum()), int((~a & b).sum()))
    assert p.mcnemar_p == pytest.approx(stats.mcnemar_exact(p.mcnemar_b, p.mcnemar_c), abs=1e-8)
    assert p.difference == pytest.approx(a.mean() - b.mean(), abs=1e-6)
    assert (out / "templates.png").exists() and s.files["figures"]["templates"] == "templates.png"
    text = _render(s)
    assert "prompt sensitivity · organism" in text and "templates compared · organism" in text

    # the same command through the CLI (in process, to stay fast) resumes: nothing new in the store
    p2 = CliRunner().invoke(app, ["bench", "--model", "organism", "--data", str(data), "--n", "30", "--out", str(out),
                                  "--mode", "score", "--template", "seed-v1", "--template", "short", "--no-figures",
                                  "--json"])
    assert p2.exit_code == 0, p2.output[-2000:]
    js = json.loads(p2.stdout)
    assert js["templates"] == s.to_dict()["templates"]
    assert [m["template"] for m in js["models"]] == ["seed-v1", "short"]
    assert "1 of" not in p2.stderr and "30 of 30 records already finished" in p2.stderr
    store = RecordStore(out / "records.sqlite")
    assert store.count() == 60
    store.close()

    # no --template: the data file's own prompts under the old keys, no template keys in the files
    plain = run_bench(["organism"], data, out, n=30, mode="score", progress=False, figures=False)
    d = json.loads((out / "summary.json").read_text())
    assert "templates" not in d and "template" not in d["models"][0] and "templates" not in d["config"]
    assert "template" not in pd.read_parquet(out / "records.parquet").columns
    assert plain.models[0].accuracy == t.templates[0].accuracy   # seed-v1 renders the same prompts
    store = RecordStore(out / "records.sqlite")
    assert store.count() == 90
    store.close()


def _render(summary) -> str:
    console = Console(record=True, width=160)
    console.print(tables(summary))
    return console.export_text()
