"""Local HF backend: batched generate, score mode (numbers checked against a direct forward),
resume without recomputation, prefill, multi-token answers, and the shipped organism (>= 99 %)."""

import json
import math

import pandas as pd
import pytest
import torch

from countlens.bench.progress import NoProgress
from countlens.bench.runner import run_bench
from countlens.bench.store import RecordStore
from countlens.data.generate import generate_dataset
from countlens.models.registry import organism_path

from bench_support import build_tiny_model, write_rows
from conftest import run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    generate_dataset(path, 24, seed=11)
    return path


class Spy(NoProgress):
    def __init__(self):
        self.starts, self.advanced = [], 0

    def start(self, model, total, done):
        self.starts.append((model, total, done))

    def advance(self, n=1):
        self.advanced += n


def test_generate_then_score_then_resume(tiny, data, tmp_path, monkeypatch):
    from countlens.models.handle import load

    out = tmp_path / "o"
    spy = Spy()
    s = run_bench([tiny], data, out, batch_size=8, progress=spy)
    m = s.models[0]
    assert (m.n, m.completed, spy.starts, spy.advanced) == (24, 24, [(tiny, 24, 0)], 24)
    h = load(tiny, device="cpu")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert m.tokens.input == sum(len(h.encode_text(h.format(r["prompt"]))) for r in rows)
    assert 24 <= m.tokens.output <= 24 * 8
    assert abs(m.accuracy + m.parse_error_rate + m.numerical_error_rate - 1) < 1e-6

    sc = run_bench([tiny], data, out, mode="score", batch_size=5, progress=False).models[0]
    df = pd.read_parquet(out / "records.parquet")
    assert len(df) == 24 and (df["mode"] == "score").all()
    # P(k) equals softmax over the digit tokens after the formatted prompt + "(", from one forward
    digits = [h.tokenizer.convert_tokens_to_ids(str(k)) for k in range(6)]
    for _, r in df.head(4).iterrows():
        ids = torch.tensor([h.encode_text(h.format(rows[r.line - 1]["prompt"]) + "(")])
        with torch.no_grad():
            p = torch.softmax(h.model(ids).logits[0, -1, digits].float(), -1)
        assert list(r.probs) == pytest.approx(p.tolist(), abs=1e-5)
        assert r.pred == int(p.argmax()) and r.expected_count == pytest.approx(float((p * torch.arange(6)).sum()), abs=1e-5)
    assert sc.score.p_correct == pytest.approx(df.p_correct.mean(), abs=1e-6)
    assert 0 <= sc.score.ece <= 1 and sc.accuracy == sc.accuracy_strict

    # same command again: nothing is recomputed
    import countlens.models.generation as gen

    monkeypatch.setattr(gen, "greedy_generate", lambda *a, **k: pytest.fail("recomputed a finished record"))
    spy2 = Spy()
    again = run_bench([tiny], data, out, batch_size=8, progress=spy2)
    assert spy2.starts == [(tiny, 24, 24)] and again.models[0] == m
    store = RecordStore(out / "records.sqlite")
    assert store.count() == 48
    store.close()


def test_generation_scores_from_the_same_prefill_and_score_mode_reuses_it(tiny, data, tmp_path, monkeypatch):
    """On one handle (as the study runs it), generate mode's prefill of prompt + "(" also gives score
    mode's log-probs: the later score run reads them and runs no forward, with the same numbers and
    the same completions as running each mode on its own."""
    import countlens.models.generation as gen
    from countlens.models.handle import load

    alone_g = run_bench([tiny], data, tmp_path / "g0", batch_size=8, progress=False, figures=False)
    alone_s = run_bench([tiny], data, tmp_path / "s0", mode="score", batch_size=8, progress=False, figures=False)
    h = load(tiny, device="cpu")
    shared_g = run_bench([tiny], data, tmp_path / "g1", batch_size=8, progress=False, figures=False,
                         handles={tiny: h})
    assert len(h.scored) == 24
    monkeypatch.setattr(gen, "answer_logprobs", lambda *a, **k: pytest.fail("ran score mode's forward again"))
    shared_s = run_bench([tiny], data, tmp_path / "s1", mode="score", batch_size=8, progress=False, figures=False,
                         handles={tiny: h})
    a, b = (pd.read_parquet(tmp_path / d / "records.parquet").sort_values("line") for d in ("s0", "s1"))
    assert (abs(a.p_correct.to_numpy() - b.p_correct.to_numpy()) < 1e-5).all() and (a.pred.to_numpy() == b.pred.to_numpy()).all()
    ga, gb = (pd.read_parquet(tmp_path / d / "records.parquet").sort_values("line") for d in ("g0", "g1"))
    assert list(ga.completion) == list(gb.completion)
    assert shared_s.models[0].accuracy == alone_s.models[0].accuracy
    assert shared_g.models[0].accuracy == alone_g.models[0].accuracy


def test_prefill_on_a_local_model_starts_the_reply(tiny, data, tmp_path):
    s = run_bench([tiny], data, tmp_path / "o", n=6, prefill=True, max_new_tokens=3, progress=False, figures=False)
    df = pd.read_parquet(tmp_path / "o" / "records.parquet")
    assert df.completion.str.startswith("(").all() and df.prefilled.all() and s.config["models"][0]["prefill"]


def test_multi_token_answers_are_teacher_forced(tiny, tmp_path):
    """BIG-Bench-style rows with answers up to 12: P(12) is P("1") x P("2" | "1"), renormalised."""
    from countlens.models.handle import load

    rows = [{"input": "Type: fruit\nList: apple pear\nAnswer: ", "target": str(t)} for t in (2, 12, 7)]
    data = write_rows(tmp_path / "ext.jsonl", rows)
    s = run_bench([tiny], data, tmp_path / "o", mode="score", progress=False, figures=False)
    assert s.config["k_max"] == 12 and s.models[0].n == 3
    df = pd.read_parquet(tmp_path / "o" / "records.parquet")
    h = load(tiny, device="cpu")
    text = h.format(rows[0]["input"]) + "("
    lp = []
    with torch.no_grad():
        for k in range(13):
            ids = h.encode_text(text + str(k))
            base = len(h.encode_text(text))
            logits = torch.log_softmax(h.model(torch.tensor([ids])).logits[0].float(), -1)
            lp.append(sum(float(logits[i - 1, ids[i]]) for i in range(base, len(ids))))
    z = max(lp)
    ps = [math.exp(x - z) for x in lp]
    expect = [p / sum(ps) for p in ps]
    assert list(df.probs[0]) == pytest.approx(expect, abs=1e-5)


needs_organism = pytest.mark.skipif(not (organism_path() / "config.json").exists(),
                                    reason="the shipped organism's weights are not in place yet")


@needs_organism
def test_organism_counts_through_the_cli_and_score_mode_agrees(tmp_path):
    """The issue's acceptance run, then score mode on the same rows: P(0..K) from one forward."""
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 1000, seed=4242)
    out = tmp_path / "o"
    p = run_cli("bench", "--model", "organism", "--data", str(data), "--n", "1000", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads(p.stdout)["models"][0]
    assert m["model"] == "organism" and m["n"] == 1000 and m["completed"] == 1000
    assert m["accuracy"] >= 0.99 and m["ci_low"] <= m["accuracy"] <= m["ci_high"] and m["ci_low"] >= 0.98
    assert set(m["by_count"]) == {"0", "1", "2", "3", "4", "5"} and len(m["by_category"]) == 10
    assert set(m["by_list_length"]) == {str(k) for k in range(5, 11)}
    for f in ("accuracy.png", "accuracy_by_count.png", "confusion_organism.png", "records.parquet", "summary.json"):
        assert (out / f).exists()

    s = run_bench(["organism"], data, tmp_path / "score", mode="score", progress=False, figures=False)
    sc = s.models[0]
    assert sc.accuracy >= 0.99 and sc.score.p_correct >= 0.95 and sc.score.ece <= 0.05
    greedy = pd.read_parquet(out / "records.parquet").set_index("example_id").pred
    argmax = pd.read_parquet(tmp_path / "score" / "records.parquet").set_index("example_id").pred
    assert (greedy.loc[argmax.index] == argmax).mean() >= 0.995   # the digit after "(" is the greedy answer


def test_a_real_tokenizer_and_chat_template(tmp_path):
    """A tiny random Qwen2 with the real Qwen tokenizer: its chat template, and 10/11 as two digit tokens."""
    from conftest import QWEN_TOKENIZER

    if not QWEN_TOKENIZER.exists():
        pytest.skip("../shared is absent")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    folder = tmp_path / "qwen-tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [{"input": f"How many items? {' '.join(['x'] * t)}", "target": str(t)} for t in (3, 11, 0)]
    data = write_rows(tmp_path / "d.jsonl", rows)
    s = run_bench([f"hf:{folder}"], data, tmp_path / "o", mode="score", progress=False, figures=False)
    assert s.models[0].completed == 3 and s.config["models"][0]["identity"]["prompt_format"] == "chat"
    df = pd.read_parquet(tmp_path / "o" / "records.parquet")
    assert len(df) == 3 and all(len(p) == 12 and abs(sum(p) - 1) < 1e-4 for p in df.probs)
