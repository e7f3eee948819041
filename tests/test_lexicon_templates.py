import json

import pytest

from conftest import SEED_FILE, needs_seed_file, run_cli
from countlens import InputError, load_lexicon, load_template


def test_clean_lexicon_has_every_word_in_one_place():
    lex = load_lexicon("clean-v1")
    assert sorted(lex.categories) == sorted(["fruit", "animal", "vehicle", "color", "tool", "furniture",
                                             "clothing", "food", "sport", "instrument"])
    assert all(len(ws) >= 14 for ws in lex.categories.values())
    assert len(lex.noise) >= 25
    for w in lex.words:
        assert len(lex.places(w)) == 1, w
    assert not lex.ambiguous and not lex.read_only


def test_seed_lexicon_flags_its_three_ambiguous_words_and_refuses_generation():
    lex = load_lexicon("seed-v1")
    assert set(lex.ambiguous) == {"orange", "fish", "chicken"}
    assert set(lex.ambiguous["orange"]) == {"fruit", "color"}
    with pytest.raises(InputError, match="read-only"):
        lex.require_clean()
    from countlens.data.generate import generate_examples

    with pytest.raises(InputError, match="read-only"):
        generate_examples(10, lexicon="seed-v1")


def test_user_lexicon_with_a_word_in_two_categories_names_file_line_field(tmp_path):
    f = tmp_path / "lex.yaml"
    f.write_text("categories:\n  fruit: [apple, orange]\n  color:\n    - red\n    - orange\nnoise: [rock]\n")
    with pytest.raises(InputError) as e:
        load_lexicon(str(f))
    assert str(e.value).startswith(f"{f}:5: field 'categories.color'")
    assert "orange" in str(e.value)


def test_user_lexicon_json_noise_overlap(tmp_path):
    f = tmp_path / "lex.json"
    f.write_text(json.dumps({"categories": {"fruit": ["apple", "pear"]}, "noise": ["rock", "pear"]}))
    with pytest.raises(InputError, match="noise"):
        load_lexicon(str(f))
    f.write_text(json.dumps({"categories": {"fruit": ["apple", "pear"]}, "noise": ["rock"]}))
    assert load_lexicon(str(f)).count("fruit", ["apple", "rock", "pear"]) == 2


@needs_seed_file
def test_seed_template_reproduces_the_original_prompts_byte_for_byte():
    tpl = load_template("seed-v1")
    with open(SEED_FILE) as f:
        rows = [json.loads(next(f)) for _ in range(200)]
    for r in rows:
        assert tpl.render(r["category"], r["word_list"]) == r["prompt"]
        assert tpl.expected_completion(r["answer"]) == r["expected_completion"]


def test_builtin_templates_and_user_template(tmp_path):
    for name in ("seed-v1", "short", "fewshot"):
        t = load_template(name)
        assert t.answer_prefix == "(" and t.expected_completion(3) == "(3)"
        assert "fruit" in t.render("fruit", ["a", "b"]) and "a b" in t.render("fruit", ["a", "b"])
    f = tmp_path / "t.yaml"
    f.write_text('prompt: "Category={category}; items={words}; count="\nseparator: ", "\nanswer_prefix: "["\n'
                 'completion: "[{n}]"\n')
    t = load_template(str(f))
    assert t.render("tool", ["saw", "axe"]) == "Category=tool; items=saw, axe; count="
    assert t.expected_completion(2) == "[2]"
    f.write_text('prompt: "Category={category}"\n')
    with pytest.raises(InputError, match=r"t.yaml:1: field 'prompt'"):
        load_template(str(f))
    f.write_text('prompt: "{category} {words}"\ncompletion: "<{n}>"\n')
    with pytest.raises(InputError, match="answer_prefix"):
        load_template(str(f))


def test_lexicon_cli_json_shape():
    proc = run_cli("lexicon", "--json", check=True)
    d = json.loads(proc.stdout)
    assert set(d) == {"categories", "noise"} and d["categories"]["fruit"][0] == "apple"
