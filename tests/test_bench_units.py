"""SPEC parsing, the retry/rate-limit policy, redaction, external data, records and statistics."""

import json

import numpy as np
import pytest

from countlens.backends.base import Completion, GenSettings, Scored, redact
from countlens.backends.retry import (Failure, RateLimiter, RetryPolicy, call_with_retries, http_failure,
                                     retry_after_seconds)
from countlens.backends.spec import parse_spec
from countlens.bench import stats
from countlens.bench.data import BenchExample, load_examples
from countlens.bench.metrics import comparisons, model_metrics
from countlens.bench.records import from_completion, from_scored, key_fields, record_key
from countlens.errors import InputError

from bench_support import PLANTED_KEY, write_rows


# --- SPEC -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, name, base", [
    ("organism", "hf", "organism", None),
    ("hf:Qwen/Qwen2.5-1.5B-Instruct", "hf", "Qwen/Qwen2.5-1.5B-Instruct", None),
    ("Qwen/Qwen2.5-1.5B-Instruct", "hf", "Qwen/Qwen2.5-1.5B-Instruct", None),
    ("./models/x", "hf", "./models/x", None),
    ("openai:gpt-4o-mini", "openai", "gpt-4o-mini", None),
    ("openai:llama3.1:8b@http://127.0.0.1:11434/v1", "openai", "llama3.1:8b", "http://127.0.0.1:11434/v1"),
    ("openai:org/model@name@https://h:8000/v1", "openai", "org/model@name", "https://h:8000/v1"),
    ("anthropic:claude-3-5-haiku-20241022", "anthropic", "claude-3-5-haiku-20241022", None),
    ("bedrock:anthropic.claude-3-haiku-20240307-v1:0", "bedrock", "anthropic.claude-3-haiku-20240307-v1:0", None),
    ("bedrock:us.meta.llama3-1-70b-instruct-v1:0", "bedrock", "us.meta.llama3-1-70b-instruct-v1:0", None),
])
def test_spec_splits_at_first_colon(text, kind, name, base):
    s = parse_spec(text)
    assert (s.kind, s.name, s.base_url) == (kind, name, base)
    assert s.label == text


def test_spec_errors_and_credentials_in_url_are_dropped_from_label():
    with pytest.raises(InputError):
        parse_spec("bedrock:")
    with pytest.raises(InputError):
        parse_spec("")
    s = parse_spec("openai:m@http://user:secretpw@127.0.0.1:9/v1")
    assert s.base_url == "http://user:secretpw@127.0.0.1:9/v1"
    assert "secretpw" not in s.label and s.label == "openai:m@http://127.0.0.1:9/v1"


# --- retry policy and rate limit ------------------------------------------------------------

def test_retry_backoff_grows_with_jitter_and_retry_after_wins():
    p = RetryPolicy(base=1.0, cap=8.0)
    for r, (lo, hi) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8)]):
        d = [p.backoff(r) for _ in range(50)]
        assert lo <= min(d) and max(d) <= hi and len(set(d)) > 1
    sleeps = []
    calls = iter([Failure("429", True, 2.5), Failure("500", True, None), None])

    def fn():
        f = next(calls)
        if f:
            raise RuntimeError(f)
        return "ok"

    got = call_with_retries(fn, lambda e: e.args[0], RetryPolicy(base=0.1), sleep=sleeps.append)
    assert (got.value, got.attempts, got.error) == ("ok", 3, None)
    assert sleeps[0] == 2.5 and 0.1 <= sleeps[1] <= 0.2  # second retry: base x 2, half jittered


def test_retry_gives_up_as_error_not_exception_and_unknown_errors_propagate():
    sleeps = []

    def always():
        raise RuntimeError("x")

    got = call_with_retries(always, lambda e: Failure("HTTP 503: down", True), RetryPolicy(max_retries=3, base=0.01),
                            sleep=sleeps.append)
    assert (got.value, got.attempts, got.error, len(sleeps)) == (None, 4, "HTTP 503: down", 3)
    got = call_with_retries(always, lambda e: Failure("HTTP 400: bad", False), RetryPolicy(), sleep=sleeps.append)
    assert got.attempts == 1 and got.error == "HTTP 400: bad"
    with pytest.raises(RuntimeError):
        call_with_retries(always, lambda e: None, RetryPolicy())


def test_retry_after_headers():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_which_failures_are_retried():
    assert http_failure(429, "slow down", {"retry-after": "7"}) == Failure("HTTP 429: slow down", True, 7.0)
    assert http_failure(503, "x").retryable and http_failure(529, "overloaded").retryable
    assert http_failure(408, "x").retryable and http_failure(None, "timed out", timeout=True).retryable
    assert not http_failure(400, "bad").retryable and not http_failure(401, "key").retryable
    assert http_failure(404, "x", {"retry-after": "7"}).retry_after is None


def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(rpm=120, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        lim.wait()
    assert now[0] == pytest.approx(2.0)  # 5 starts at 0, .5, 1, 1.5, 2 s
    RateLimiter(None).wait()


def test_redact_removes_env_keys_registered_keys_and_key_shapes(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    text = f"Incorrect API key provided: {PLANTED_KEY}. Also sk-proj-****abcd and AKIAABCDEFGHIJKLMNOP."
    out = redact(text)
    assert PLANTED_KEY not in out and "sk-proj" not in out and "AKIA" not in out
    assert redact("(3)") == "(3)" and redact(None) is None


# --- external data --------------------------------------------------------------------------

def test_external_rows_prompt_answer_and_input_target(tmp_path):
    f = write_rows(tmp_path / "bbh.jsonl", [
        {"input": "I have a piano, a flute, and two trombones. How many musical instruments?", "target": "4"},
        {"input": "I have 18 things...", "target": "18"},
    ])
    exs = load_examples(f)
    assert [e.answer for e in exs] == [4, 18] and [e.id for e in exs] == ["line-1", "line-2"]
    assert exs[0].category is None
    g = write_rows(tmp_path / "pa.jsonl", [{"id": "a", "prompt": "p1", "answer": "7", "category": "fruit"},
                                           {"id": "b", "prompt": "p2", "answer": 3}])
    assert [(e.id, e.answer, e.category) for e in load_examples(g)] == [("a", 7, "fruit"), ("b", 3, None)]
    assert len(load_examples(g, n=1)) == 1


@pytest.mark.parametrize("row, field", [
    ({"input": "x", "target": "eight"}, "target"),
    ({"prompt": "x"}, "answer"),
    ({"prompt": "", "answer": 1}, "prompt"),
    ({"prompt": "x", "answer": -1}, "answer"),
    ({"foo": 1}, None),
])
def test_external_rows_errors_name_line_and_field(tmp_path, row, field):
    f = write_rows(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": 1}, row])
    with pytest.raises(InputError) as e:
        load_examples(f)
    assert e.value.line == 2 and e.value.field == field


def test_duplicate_ids_are_an_error(tmp_path):
    f = write_rows(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "p", "answer": 1}, {"id": "a", "prompt": "q", "answer": 1}])
    with pytest.raises(InputError, match="duplicate id 'a'"):
        load_examples(f)


# --- records, metrics, statistics -----------------------------------------------------------

def _ex(i, answer, length=5, cat="fruit"):
    return BenchExample(id=f"e{i}", prompt=f"prompt {i}", answer=answer, category=cat, list_length=length, line=i)


def _gen(model, ex, text):
    f = key_fields({"backend": "x", "model": model}, ex, "generate", GenSettings(), None)
    return from_completion(model, ex, f, Completion(text=text, input_tokens=10, output_tokens=3)
                           if text is not None else Completion(text=None, error="HTTP 500: boom", attempts=7))


def test_key_changes_with_anything_that_changes_an_answer():
    ex = _ex(0, 2)
    ident = {"backend": "hf", "model": "m", "weights": "abc"}
    base = record_key(key_fields(ident, ex, "generate", GenSettings(), None))
    variants = [key_fields({**ident, "weights": "abd"}, ex, "generate", GenSettings(), None),
                key_fields(ident, BenchExample("e0", "other prompt", 2), "generate", GenSettings(), None),
                key_fields(ident, BenchExample("e1", ex.prompt, 2), "generate", GenSettings(), None),
                key_fields(ident, ex, "generate", GenSettings(max_new_tokens=9), None),
                key_fields(ident, ex, "generate", GenSettings(prefill=True), None),
                key_fields(ident, ex, "generate", GenSettings(system="be brief"), None),
                key_fields(ident, ex, "score", GenSettings(), 5)]
    assert len({base, *map(record_key, variants)}) == len(variants) + 1
    # score mode ignores generation length, not K
    s = lambda st, k: record_key(key_fields(ident, ex, "score", st, k))  # noqa: E731
    assert s(GenSettings(), 5) == s(GenSettings(max_new_tokens=99), 5) != s(GenSettings(), 6)


def test_error_kinds_and_parsers_as_the_original():
    ex = _ex(0, 3)
    cases = {"(3)": (3, 3, True, True, None), "( 3 )": (3, 3, True, True, None),
             "The answer is (3).": (3, None, True, False, None), "3 words": (3, None, True, False, None),
             "(4)": (4, 4, False, False, "numerical"), "no idea": (None, None, False, False, "parse")}
    for text, (pred, strict, ok, ok_strict, kind) in cases.items():
        r = _gen("m", ex, text)
        assert (r.pred, r.pred_strict, r.correct, r.correct_strict, r.error_kind) == (pred, strict, ok, ok_strict, kind), text
        assert r.completion == text
    r = _gen("m", ex, None)
    assert (r.status, r.error_kind, r.api_error, r.attempts) == ("api_error", "api", "HTTP 500: boom", 7)


def test_model_metrics_numbers():
    # 10 examples: 6 right (one only leniently), 2 numerical (+1, -2), 1 parse error, 1 API error.
    exs = [_ex(i, i % 3, length=5 + i % 2, cat="fruit" if i < 5 else "tool") for i in range(10)]
    texts = ["(0)", "(1)", "(2)", "(0)", "answer (1)", "(2)", "(1)", "(3)", "nope", None]
    recs = [_gen("m", e, t) for e, t in zip(exs, texts)]
    m = model_metrics("m", "generate", recs)
    assert (m.n, m.completed) == (10, 9)
    assert m.accuracy == 0.6 and m.accuracy_strict == 0.5
    assert (m.parse_error_rate, m.numerical_error_rate, m.api_error_rate) == (0.1, 0.2, 0.1)
    assert m.mean_signed_error == pytest.approx(3 / 8)  # six right, e6 0->1 (+1), e7 1->3 (+2)
    assert m.ci_low <= 0.6 <= m.ci_high and 0.2 < m.ci_low and m.ci_high < 1.0
    assert {k: v.n for k, v in m.by_count.items()} == {"0": 4, "1": 3, "2": 3}
    assert set(m.by_list_length) == {"5", "6"} and set(m.by_category) == {"fruit", "tool"}
    assert m.by_category["fruit"].accuracy == 1.0 and m.by_category["tool"].accuracy == 0.2
    c = m.confusion
    assert c.true == [0, 1, 2] and c.pred == [0, 1, 2, 3, "none"]
    assert sum(map(sum, c.matrix)) == 10 and c.matrix[0][4] == 1 and c.matrix[2][4] == 1 and c.matrix[1][3] == 1
    assert (m.tokens.input, m.tokens.output, m.tokens.requests) == (90, 27, 10)
    assert m.tokens.attempts == 9 + 7


def test_mean_signed_error_exact():
    exs = [_ex(0, 2), _ex(1, 2), _ex(2, 2), _ex(3, 2)]
    recs = [_gen("m", e, t) for e, t in zip(exs, ["(2)", "(5)", "(1)", "x"])]
    assert model_metrics("m", "generate", recs).mean_signed_error == pytest.approx((0 + 3 - 1) / 3)


def test_score_records_normalise_over_answers_and_calibration():
    ex = _ex(0, 1)
    f = key_fields({"m": 1}, ex, "score", GenSettings(), 2)
    r = from_scored("m", ex, f, Scored(logprobs=[np.log(0.1), np.log(0.3), np.log(0.1)]))  # sums to .5
    assert r.probs == pytest.approx([0.2, 0.6, 0.2]) and r.pred == 1 and r.correct
    assert r.p_correct == pytest.approx(0.6) and r.expected_count == pytest.approx(1.0)
    m = model_metrics("m", "score", [r])
    assert m.score.ece == pytest.approx(0.4) and m.score.p_correct == pytest.approx(0.6)


def test_mcnemar_and_paired_bootstrap():
    assert stats.mcnemar_exact(10, 2) == pytest.approx(0.03857421875)
    assert stats.mcnemar_exact(0, 0) == 1.0
    a = np.array([1] * 60 + [0] * 40)
    b = np.array([1] * 50 + [0] * 10 + [1] * 2 + [0] * 38)
    p = stats.paired_compare(a, b)
    assert (p.n, p.mcnemar_b, p.mcnemar_c) == (100, 10, 2)
    assert p.difference == pytest.approx(0.08) and p.ci_low < 0.08 < p.ci_high and p.ci_low > 0
    assert p.bootstrap_p < 0.05
    same = stats.paired_compare(a, a)
    assert same.difference == 0 and same.bootstrap_p == 1.0 and same.mcnemar_p == 1.0


def test_bootstrap_ci_is_seeded_and_covers():
    v = np.array([1] * 80 + [0] * 20)
    assert stats.bootstrap_ci(v) == stats.bootstrap_ci(v)
    lo, hi = stats.bootstrap_ci(v)
    assert 0.7 < lo < 0.8 < hi < 0.9


def test_comparisons_pair_on_shared_examples():
    exs = [_ex(i, 1) for i in range(6)]
    ra = [_gen("a", e, "(1)") for e in exs]
    rb = [_gen("b", e, t) for e, t in zip(exs[:5], ["(1)", "(2)", "(2)", "(1)", "(2)"])]
    (c,) = comparisons({"a": ra, "b": rb})
    assert (c.model_a, c.model_b, c.n, c.accuracy_a, c.accuracy_b) == ("a", "b", 5, 1.0, 0.4)
    assert (c.mcnemar_b, c.mcnemar_c) == (3, 0) and c.mcnemar_p == pytest.approx(0.25)
    json.dumps(c.model_dump())


def test_the_original_study_file_reads_as_is():
    from conftest import SEED_FILE

    if not SEED_FILE.exists():
        pytest.skip("../shared is absent")
    exs = load_examples(SEED_FILE, n=50)
    assert len(exs) == 50 and exs[0].id == "line-1" and exs[0].category and exs[0].list_length == 10
    assert {e.answer for e in exs} <= set(range(6))
