"""Anthropic backend through the real `anthropic` client against a Messages server on 127.0.0.1."""

import pytest

from countlens.backends import RetryPolicy
from countlens.bench.runner import run_bench
from countlens.data.generate import generate_dataset
from countlens.errors import InputError

from bench_support import PLANTED_KEY, FakeServer, ServerState, answers_of, files_containing

FAST = RetryPolicy(max_retries=12, base=0.01, cap=0.05)


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    generate_dataset(path, 30, seed=5)
    return path


def test_anthropic_faults_prefill_tokens_and_no_key_in_results(data, tmp_path, monkeypatch):
    st = ServerState(answers_of(data), fault_rate=0.3, seed=2,
                     reply=lambda p, n: f"({n})" if n != 0 else "zero")  # count 0: a parse error
    with FakeServer(st, flavour="anthropic") as srv:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
        out = tmp_path / "o"
        s = run_bench(["anthropic:claude-test"], data, out, prefill=True, max_new_tokens=6, system="Count carefully.",
                      concurrency=3, retry=FAST, progress=False, figures=False)
        m = s.models[0]
        assert st.faults >= 5 and (m.completed, m.api_error_rate) == (30, 0.0)
        assert m.accuracy == pytest.approx(25 / 30, abs=1e-6) and m.parse_error_rate == pytest.approx(5 / 30, abs=1e-6)
        assert m.accuracy_strict == m.accuracy            # the prefix "(" + "3)" is a strict "(3)"
        assert m.tokens.attempts == 30 + st.faults and m.tokens.input > 0
        assert m.tokens.output == sum(len(f"{n})") for n in answers_of(data).values() if n) + 5 * len("zero")
        ok = [r for r in st.requests if r["body"]["messages"][0]["content"] in st.answers]
        for r in ok:
            b = r["body"]
            assert b["max_tokens"] == 6 and b.get("temperature", 0) == 0 and b["system"] == "Count carefully."
            assert b["messages"][-1] == {"role": "assistant", "content": "("}
            h = r["headers"]  # x-api-key, or a bearer token in recent SDKs
            assert h.get("x-api-key", h.get("authorization", "").removeprefix("Bearer ")) == PLANTED_KEY
        assert files_containing(out, PLANTED_KEY) == []
        # without --prefill the reply is not started for the model, and the records are new ones
        before = len(st.requests)
        st.fault_rate = 0.0
        s2 = run_bench(["anthropic:claude-test"], data, out, n=5, retry=FAST, progress=False, figures=False)
        assert len(st.requests) - before == 5 and all(len(r["body"]["messages"]) == 1 for r in st.requests[before:])
        assert s2.models[0].n == 5


def test_anthropic_without_key_is_one_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(InputError, match="ANTHROPIC_API_KEY"):
        run_bench(["anthropic:claude-test"], data, tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="raw"):
        monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
        run_bench(["anthropic:claude-test"], data, tmp_path / "o", prompt_format="raw", progress=False)
