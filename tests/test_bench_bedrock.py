"""Bedrock Converse through boto3 with botocore's Stubber: request shape, throttling, failures."""

import boto3
import pytest
from botocore.stub import Stubber

from countlens.backends import RetryPolicy
from countlens.backends import bedrock as bedrock_mod
from countlens.bench.data import load_examples
from countlens.bench.runner import run_bench
from countlens.data.generate import generate_dataset
from countlens.errors import InputError

from bench_support import PLANTED_KEY, files_containing

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"  # a colon inside the id


def _client():
    return boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                        aws_secret_access_key=PLANTED_KEY)


def _ok(text, n_in=50, n_out=3):
    return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": n_in, "outputTokens": n_out, "totalTokens": n_in + n_out},
            "metrics": {"latencyMs": 10}}


def test_bedrock_converse_throttling_and_failures(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 6, seed=7)
    exs = load_examples(data)
    client = _client()
    stub = Stubber(client)

    def expect(ex):
        return {"modelId": MODEL_ID, "inferenceConfig": {"maxTokens": 8, "temperature": 0.0},
                "messages": [{"role": "user", "content": [{"text": ex.prompt}]},
                             {"role": "assistant", "content": [{"text": "("}]}]}

    # ex0: throttled twice, then answered; ex1: a 5xx then answered; ex2: invalid for good (400);
    # ex3-5: answered (ex5 wrongly).
    for _ in range(2):
        stub.add_client_error("converse", "ThrottlingException", "Too many requests", 429, expected_params=expect(exs[0]))
    stub.add_response("converse", _ok(f"{exs[0].answer})"), expect(exs[0]))
    stub.add_client_error("converse", "ServiceUnavailableException", "busy", 503, expected_params=expect(exs[1]))
    stub.add_response("converse", _ok(f"{exs[1].answer})"), expect(exs[1]))
    stub.add_client_error("converse", "ValidationException", f"bad request for key {PLANTED_KEY}", 400,
                          expected_params=expect(exs[2]))
    for ex in exs[3:5]:
        stub.add_response("converse", _ok(f"{ex.answer})"), expect(ex))
    stub.add_response("converse", _ok(f"{exs[5].answer + 2})"), expect(exs[5]))
    monkeypatch.setattr(bedrock_mod, "make_client", lambda timeout: client)
    out = tmp_path / "o"
    with stub:
        s = run_bench([f"bedrock:{MODEL_ID}"], data, out, prefill=True, concurrency=1,
                      retry=RetryPolicy(max_retries=4, base=0.001), progress=False, figures=False)
        stub.assert_no_pending_responses()
    m = s.models[0]
    assert m.model == f"bedrock:{MODEL_ID}"
    assert (m.n, m.completed) == (6, 5)
    assert m.accuracy == pytest.approx(4 / 6, abs=1e-6) and m.accuracy_strict == m.accuracy
    assert m.api_error_rate == pytest.approx(1 / 6, abs=1e-6) and m.numerical_error_rate == pytest.approx(1 / 6, abs=1e-6)
    assert m.mean_signed_error == pytest.approx(2 / 5, abs=1e-6)
    assert (m.tokens.input, m.tokens.output, m.tokens.attempts) == (250, 15, 3 + 2 + 1 + 3)
    assert files_containing(out, PLANTED_KEY) == []


def test_bedrock_client_uses_standard_aws_configuration(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "http://127.0.0.1:4566")
    c = bedrock_mod.make_client(5.0)
    assert c.meta.region_name == "eu-west-3" and c.meta.endpoint_url == "http://127.0.0.1:4566"
    assert c.meta.config.retries["total_max_attempts"] == 1 and c.meta.config.read_timeout == 5.0
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(InputError, match="region"):
        bedrock_mod.make_client(5.0)
