"""The openai backend against a real OpenAI-compatible server: `transformers serve` on SmolLM2-135M-Instruct.

The server is transformers' own (`transformers serve FOLDER`, FastAPI + uvicorn: the `serving` extra),
on 127.0.0.1 with the chat API; vLLM, Ollama and llama.cpp's server speak the same API. The greedy
answers through it must match the local `hf` backend's on the same rows (>= 98 %; measured: 100 %).
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import run_cli
from countlens.models.registry import NAMED, named_gguf

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(named_gguf(NAMED["smollm2-135m"]) is None,
                                 reason=f"SmolLM2 is not installed: {NAMED['smollm2-135m'].install}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (fastapi, uvicorn)")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving] (fastapi, uvicorn)")
    from countlens.models.registry import resolve

    folder = resolve("smollm2-135m")
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        exe = shutil.which("transformers")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    proc = subprocess.Popen([str(exe), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}); see {log.name}")
            time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not answer /health within 120 s")
        yield folder, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_bench_through_transformers_serve_matches_the_local_backend(server, tmp_path):
    folder, url = server
    run_cli("data", "generate", "--n", "30", "--seed", "4", "--out", str(tmp_path / "d.jsonl"), check=True)
    run_cli("bench", "--model", f"openai:{folder}@{url}/v1", "--data", str(tmp_path / "d.jsonl"),
            "--out", str(tmp_path / "served"), check=True)
    run_cli("bench", "--model", "smollm2-135m", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "local"),
            check=True)
    served = pd.read_parquet(tmp_path / "served" / "records.parquet").set_index("example_id")
    local = pd.read_parquet(tmp_path / "local" / "records.parquet").set_index("example_id")
    assert len(served) == len(local) == 30 and (served.status == "ok").all(), served.status.value_counts()
    both = served.merge(local, left_index=True, right_index=True, suffixes=("_served", "_local"))
    same_answer = (both.pred_served.fillna(-1) == both.pred_local.fillna(-1)).mean()
    assert same_answer >= 0.98, both[["completion_served", "completion_local"]]
    # the same text, not just the same parsed answer: the server applies the same chat template
    assert (both.completion_served.str.strip() == both.completion_local.str.strip()).mean() >= 0.98
    assert both.input_tokens_served.sum() == both.input_tokens_local.sum()
