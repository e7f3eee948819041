import json

import pytest

from conftest import SEED_FILE, needs_seed_file, run_cli
from countlens import InputError, validate_dataset


@needs_seed_file
def test_audit_of_the_original_dataset_finds_its_known_errors(tmp_path):
    proc = run_cli("data", "validate", str(SEED_FILE), "--lexicon", "seed-v1", "--json", "--fix",
                   str(tmp_path / "fixed.jsonl"), check=True)
    s = json.loads(proc.stdout)
    assert (s["rows"], s["label_errors"], s["duplicate_word_lists"]) == (5000, 91, 26)
    assert s["unknown_words"] == 0 and s["ambiguous_rows"] > 0
    assert sum(s["balance"].values()) == 5000
    fixed = validate_dataset(tmp_path / "fixed.jsonl", "seed-v1")
    assert fixed["label_errors"] == 0 and fixed["rows"] == 5000
    # the clean lexicon does not know the ambiguous words
    clean = validate_dataset(SEED_FILE, "clean-v1", n=500)
    assert clean["rows"] == 500 and {"orange", "fish", "chicken"} & set(clean["unknown_word_list"])


def test_own_data_validates_clean(tmp_path):
    out = tmp_path / "d.jsonl"
    run_cli("data", "generate", "--n", "120", "--out", str(out), check=True)
    s = validate_dataset(out)
    assert (s["rows"], s["label_errors"], s["duplicate_word_lists"], s["ambiguous_rows"], s["unknown_words"]) == \
        (120, 0, 0, 0, 0)
    assert validate_dataset(out, n=10)["rows"] == 10


GOOD = {"prompt": "p", "category": "fruit", "word_list": ["apple", "rock"], "answer": 1}


@pytest.mark.parametrize("line, field, needle", [
    ("{not json", None, "invalid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "answer", "missing"),
    (json.dumps(GOOD | {"answer": "1"}), "answer", "integer"),
    (json.dumps(GOOD | {"word_list": "apple rock"}), "word_list", "list"),
    (json.dumps(GOOD | {"category": "planet"}), "category", "unknown category"),
])
def test_malformed_input_names_file_line_field_and_exits_2(tmp_path, line, field, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(InputError) as e:
        validate_dataset(f)
    assert e.value.line == 2 and e.value.field == field and needle in str(e.value)
    out = tmp_path / "fixed.jsonl"
    proc = run_cli("data", "validate", str(f), "--fix", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}:2")
    assert proc.stdout == "" and not out.exists()  # no half-written output
