"""OpenAI-compatible backend through the real `openai` client against a server on 127.0.0.1."""

import json

import pandas as pd
import pytest

from countlens.backends import RetryPolicy
from countlens.bench.runner import run_bench
from countlens.data.generate import generate_dataset
from countlens.errors import InputError

from bench_support import PLANTED_KEY, FakeServer, ServerState, answers_of, files_containing
from conftest import run_cli

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731 - summaries round to 6 places
FAST = RetryPolicy(max_retries=12, base=0.01, cap=0.05)


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    generate_dataset(path, 60, seed=3)
    return path


@pytest.fixture(autouse=True)
def planted_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def scripted(prompt: str, n: int) -> str:
    """Right except: count 5 -> (4) (numerical error); count 4 -> prose around (4) (lenient only)."""
    return "(4)" if n == 5 else ("The answer is (4)." if n == 4 else f"({n})")


def test_thirty_percent_faults_still_complete_every_record(data, tmp_path):
    st = ServerState(answers_of(data), fault_rate=0.3, seed=1, reply=scripted)
    out = tmp_path / "o"
    with FakeServer(st) as srv:
        s = run_bench([f"openai:counter@{srv.url}"], data, out, concurrency=4, retry=FAST, progress=False)
    m = s.models[0]
    assert st.faults >= 10                                   # ~30 % of ~85 requests failed
    assert (m.n, m.completed, m.api_error_rate) == (60, 60, 0.0)
    assert m.accuracy == approx(50 / 60) and m.accuracy_strict == approx(40 / 60)
    assert m.numerical_error_rate == approx(10 / 60) and m.parse_error_rate == 0.0
    assert m.mean_signed_error == approx(-10 / 60)
    assert m.by_count["5"].accuracy == 0.0 and m.by_count["4"].accuracy_strict == 0.0
    assert m.tokens.attempts == 60 + st.faults               # every fault was retried once more
    assert m.tokens.input == sum(len(p.split()) for p in answers_of(data))
    assert st.max_in_flight >= 2                             # requests really ran concurrently
    bodies = [r["body"] for r in st.requests]
    assert all(b["max_tokens"] == 8 and b["temperature"] == 0 and "max_completion_tokens" not in b for b in bodies)
    assert all(r["headers"]["authorization"] == f"Bearer {PLANTED_KEY}" for r in st.requests)  # the key is read...
    assert files_containing(out, PLANTED_KEY) == []                                          # ...never written
    df = pd.read_parquet(out / "records.parquet")
    assert len(df) == 60 and df["status"].eq("ok").all() and df["completion"].str.startswith("(").sum() == 50
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"models", "comparisons", "config"}
    for f in ("accuracy.png", "accuracy_by_count.png"):
        assert (out / f).stat().st_size > 1000


def test_failed_requests_are_api_errors_retried_on_rerun_and_keys_redacted(data, tmp_path):
    bad = list(answers_of(data))[:2]   # two of the first 20 rows
    st = ServerState(answers_of(data), require_max_completion_tokens=True,
                     reject=lambda p: (401, f"Incorrect API key provided: {PLANTED_KEY}") if p in bad else None)
    out = tmp_path / "o"
    with FakeServer(st) as srv:
        spec = f"openai:reasoner@{srv.url}"
        s = run_bench([spec], data, out, n=20, concurrency=3, retry=FAST, progress=False)
        m = s.models[0]
        n_bad = sum(p in bad for p in list(answers_of(data))[:20])
        assert m.api_error_rate == approx(n_bad / 20) and m.completed == 20 - n_bad
        df = pd.read_parquet(out / "records.parquet")
        errors = df[df.status == "api_error"]
        assert (errors.attempts == 1).all()                      # 401 is not retried
        assert errors.api_error.str.contains("HTTP 401").all() and not errors.api_error.str.contains("PLANTED").any()
        assert files_containing(out, PLANTED_KEY) == []
        # the server asked for max_completion_tokens: one switch, then every request uses it
        sent = [r["body"] for r in st.requests]
        assert 1 <= sum("max_tokens" in b for b in sent) <= 3          # at most the first wave in flight
        assert sum("max_completion_tokens" in b for b in sent) >= 20 and "max_tokens" not in sent[-1]
        # rerun: finished records are skipped, the API errors are asked again and now succeed
        st.reject = lambda p: None
        before = len(st.requests)
        s2 = run_bench([spec], data, out, n=20, concurrency=3, retry=FAST, progress=False)
        asked = {r["body"]["messages"][0]["content"] for r in st.requests[before:]}
        assert asked == set(bad) and s2.models[0].completed == 20
        assert s2.models[0].accuracy == 1.0


def test_raw_prompt_format_uses_the_completions_endpoint(data, tmp_path):
    st = ServerState(answers_of(data))
    with FakeServer(st) as srv:
        s = run_bench([f"openai:base@{srv.url}"], data, tmp_path / "o", n=6, prompt_format="raw", max_new_tokens=5,
                      retry=FAST, progress=False, figures=False)
    assert s.models[0].accuracy == 1.0
    assert {r["path"] for r in st.requests} == {"/v1/completions"}
    assert all(r["body"]["max_tokens"] == 5 and r["body"]["prompt"] in st.answers for r in st.requests)


def test_per_request_timeout_is_retried(data, tmp_path):
    st = ServerState(answers_of(data), slow_first=1, slow_delay=1.5)
    with FakeServer(st) as srv:
        s = run_bench([f"openai:m@{srv.url}"], data, tmp_path / "o", n=3, concurrency=1, progress=False, figures=False,
                      retry=RetryPolicy(max_retries=2, base=0.01, timeout=0.5))
    m = s.models[0]
    assert (m.completed, m.accuracy, m.tokens.attempts, len(st.requests)) == (3, 1.0, 4, 4)


def test_rpm_limit_spaces_requests(data, tmp_path):
    import time

    st = ServerState(answers_of(data))
    with FakeServer(st) as srv:
        t0 = time.perf_counter()
        run_bench([f"openai:m@{srv.url}"], data, tmp_path / "o", n=4, rpm=600, concurrency=4, retry=FAST,
                  progress=False, figures=False)
        assert time.perf_counter() - t0 >= 0.3      # 4 starts 0.1 s apart


def test_score_mode_on_an_api_model_is_a_clear_error(data, tmp_path):
    with pytest.raises(InputError, match="--mode score needs local models"):
        run_bench(["openai:m@http://127.0.0.1:9/v1"], data, tmp_path / "o", mode="score", progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_json_prints_one_object_and_score_mode_exits_2(data, tmp_path):
    st = ServerState(answers_of(data), reply=scripted)
    out = tmp_path / "cli"
    with FakeServer(st) as srv:
        spec = f"openai:counter@{srv.url}"
        p = run_cli("bench", "--model", spec, "--data", str(data), "--n", "12", "--out", str(out), "--json",
                    "--concurrency", "4")
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        assert len(p.stdout.strip().splitlines()) == 1
        m = s["models"][0]
        assert m["model"] == spec and m["n"] == 12
        keys = {"model", "n", "accuracy", "accuracy_strict", "ci_low", "ci_high", "parse_error_rate",
                "numerical_error_rate", "api_error_rate", "mean_signed_error", "by_count", "by_list_length",
                "by_category", "confusion", "tokens"}
        assert keys <= set(m)
        q = run_cli("bench", "--model", spec, "--data", str(data), "--out", str(out), "--mode", "score")
        assert q.returncode == 2 and q.stderr.count("\n") == 1 and "score" in q.stderr
        assert files_containing(out, PLANTED_KEY) == []
