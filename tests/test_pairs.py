import json

from conftest import QWEN_TOKENIZER, needs_qwen, run_cli
from countlens import load_lexicon
from countlens.data.generate import generate_dataset
from countlens.data.pairs import make_pairs

LEX = load_lexicon("clean-v1")


def check_pair(p, tok):
    low, high = p["low"], p["high"]
    assert high["answer"] == low["answer"] + 1 == p["n_high"]
    assert LEX.count(low["category"], low["word_list"]) == low["answer"]
    assert LEX.count(high["category"], high["word_list"]) == high["answer"]
    diff = [i for i, (a, b) in enumerate(zip(low["word_list"], high["word_list"])) if a != b]
    assert diff == [p["changed_index"]]
    a = tok(low["prompt"] + "(", add_special_tokens=False)["input_ids"]
    b = tok(high["prompt"] + "(", add_special_tokens=False)["input_ids"]
    assert len(a) == len(b) == p["n_tokens"]
    s, e = p["token_span"]
    changed = [i for i in range(len(a)) if a[i] != b[i]]
    assert changed and all(s <= i < e for i in changed)


@needs_qwen
def test_200_pairs_align_under_the_real_qwen_tokenizer(tmp_path, qwen_tokenizer):
    tok = qwen_tokenizer
    # the trap naive swaps fall into: tuba is two tokens, saw one
    assert len(tok(" tuba", add_special_tokens=False)["input_ids"]) == 2
    assert len(tok(" saw", add_special_tokens=False)["input_ids"]) == 1
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 3000, seed=3)
    out = tmp_path / "pairs.jsonl"
    proc = run_cli("data", "pairs", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER), "--n", "200",
                   "--out", str(out), "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["pairs"] == 200 and s["dropped_misaligned"] > 0  # some candidates cannot be aligned
    assert s["by_n_low"] == {str(k): 40 for k in range(5)}
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 200
    for p in pairs:
        check_pair(p, tok)
    assert all(p["changed_index"] == min(i for i, w in enumerate(p["low"]["word_list"])
                                         if w not in LEX.categories[p["low"]["category"]]) for p in pairs)


@needs_qwen
def test_change_at_all_and_last(tmp_path, qwen_tokenizer):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 300, seed=4, template="short")
    pairs, stats = make_pairs(data, qwen_tokenizer, 100, change_at="all")
    assert stats["pairs"] == len(pairs) == 100
    ids = {p["low"]["id"] for p in pairs}
    assert len(ids) < 100  # several pairs per low row
    for p in pairs:
        check_pair(p, qwen_tokenizer)
    last, _ = make_pairs(data, qwen_tokenizer, 20, change_at="last")
    for p in last:
        others = [i for i, w in enumerate(p["low"]["word_list"]) if w not in LEX.categories[p["low"]["category"]]]
        assert p["changed_index"] == others[-1]


def test_misaligned_candidates_are_dropped_and_counted(tmp_path):
    """A toy tokenizer that splits some words in two: naive swaps would misalign."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(LEX.words) | set("()") | {"Type", "List", "Answer", ":"}
    vocab = {w: i for i, w in enumerate(sorted(words) + ["[UNK]"])}
    # every fruit of 6+ letters is unknown -> falls back to characters? keep it simple: map to two tokens
    long_fruit = [w for w in LEX.categories["fruit"] if len(w) >= 6]
    for w in long_fruit:
        vocab.pop(w)
        for piece in (w[:3], w[3:]):
            vocab.setdefault(piece, max(vocab.values()) + 1)
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=""))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation(behavior="isolated")])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    assert len(tok(" pineapple", add_special_tokens=False)["input_ids"]) == 2
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 600, seed=5, template="short", categories=["fruit"])
    pairs, stats = make_pairs(data, tok, 100)
    assert stats["redrawn"] > 0
    for p in pairs:
        check_pair(p, tok)
