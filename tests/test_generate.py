import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from countlens import load_lexicon, load_template
from countlens.data.generate import generate_examples

LEX = load_lexicon("clean-v1")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), seed=st.integers(0, 10**6), max_count=st.integers(0, 5),
       min_len=st.integers(5, 7), span=st.integers(0, 3))
def test_generator_properties(n, seed, max_count, min_len, span):
    max_len = min_len + span
    rows = generate_examples(n, seed, min_len=min_len, max_len=max_len, max_count=max_count)
    assert len(rows) == n
    counts = Counter(r["answer"] for r in rows)
    sizes = [counts.get(k, 0) for k in range(max_count + 1)]
    assert max(sizes) - min(sizes) <= 1  # exactly balanced
    lengths = Counter(r["list_length"] for r in rows)
    lsizes = [lengths.get(k, 0) for k in range(min_len, max_len + 1)]
    assert max(lsizes) - min(lsizes) <= 1
    tpl = load_template("seed-v1")
    for r in rows:
        assert LEX.count(r["category"], r["word_list"]) == r["answer"]  # labels equal the lexicon count
        assert len(set(r["word_list"])) == len(r["word_list"])  # no repeated word
        assert len(r["word_list"]) == r["list_length"]
        assert r["prompt"] == tpl.render(r["category"], r["word_list"])
        assert r["match_positions"] == [i for i, w in enumerate(r["word_list"]) if w in LEX.categories[r["category"]]]
        assert r["expected_completion"] == f"({r['answer']})"
    # rows are shuffled, not grouped by count
    if n >= 60 and max_count >= 2:
        runs = sum(a["answer"] != b["answer"] for a, b in zip(rows, rows[1:]))
        assert runs > n // 3


def test_generator_is_deterministic_to_the_byte(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for out, seed in ((a, 7), (b, 7), (c, 8)):
        run_cli("data", "generate", "--n", "300", "--seed", str(seed), "--out", str(out), check=True)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert list(rows[0]) == ["id", "prompt", "category", "word_list", "answer", "list_length",
                             "expected_completion", "template", "match_positions"]


def test_generate_cli_json_and_categories(tmp_path):
    out = tmp_path / "d.jsonl"
    proc = run_cli("data", "generate", "--n", "60", "--seed", "1", "--out", str(out), "--categories", "fruit,tool",
                   "--template", "short", "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["rows"] == 60 and set(s["by_category"]) == {"fruit", "tool"} and s["by_category"]["fruit"] == 30
    assert s["by_count"] == {str(k): 10 for k in range(6)}
    assert s["templates"] == ["short"]


def test_generate_bad_category_exits_2_with_one_line(tmp_path):
    out = tmp_path / "d.jsonl"
    proc = run_cli("data", "generate", "--n", "10", "--out", str(out), "--categories", "planet")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "planet" in proc.stderr
    assert not out.exists()
