"""Helpers for the bench tests: tiny local models and small OpenAI/Anthropic servers on 127.0.0.1.

The servers answer counting prompts from a prompt -> answer table (an oracle), inject faults
(429 with Retry-After, 500/529) at a seeded rate, can be slow, and record what they were sent.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PLANTED_KEY = "sk-test-PLANTED-3f9a1c7e5b2d4a6f8e0c"


def build_tiny_model(folder: Path) -> Path:
    """A random 2-layer organism-shaped Llama (word-level tokenizer, chat template) in `folder`."""
    from countlens.models.organism.tokenizer import build_tokenizer
    from countlens.models.organism.train import Recipe, build_model

    tok = build_tokenizer()
    model = build_model(Recipe(d_model=32, n_layers=2, n_heads=2, d_mlp=64), tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class ServerState:
    answers: dict[str, int]
    fault_rate: float = 0.0
    seed: int = 0
    delay: float = 0.0
    slow_first: int = 0          # the first N requests take `slow_delay` seconds (timeouts)
    slow_delay: float = 0.0
    reply: Callable[[str, int], str] = lambda prompt, n: f"({n})"
    require_max_completion_tokens: bool = False
    retry_after_on_500: bool = True
    reject: Callable[[str], tuple[int, str] | None] = lambda prompt: None  # (status, message) for good
    requests: list[dict] = field(default_factory=list)
    faults: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def fault(self) -> int | None:
        with self.lock:
            if self.rng.random() < self.fault_rate:
                self.faults += 1
                return self.rng.choice([429, 500])
        return None


class _Handler(BaseHTTPRequestHandler):
    state: ServerState
    flavour: str  # "openai" or "anthropic"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        if self.flavour == "anthropic":
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)
        else:
            self._send(status, {"error": {"message": message, "type": "server_error", "code": None}}, headers)

    def do_POST(self) -> None:  # noqa: N802
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with st.lock:
            st.requests.append({"path": self.path, "body": body, "headers": {k.lower(): v for k, v in self.headers.items()}})
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            slow = len(st.requests) <= st.slow_first
        try:
            if st.delay or slow:
                time.sleep(st.slow_delay if slow else st.delay)
            status = st.fault()
            if status == 429:
                return self._error(429, "rate limited, slow down", {"Retry-After": "0"})
            if status == 500:
                code = 529 if self.flavour == "anthropic" else 500
                return self._error(code, "internal error", {"Retry-After": "0"} if st.retry_after_on_500 else None)
            return self._answer(body)
        finally:
            with st.lock:
                st.in_flight -= 1

    def _answer(self, body: dict) -> None:
        st = self.state
        if self.flavour == "anthropic":
            if not self.path.startswith("/v1/messages"):
                return self._error(404, f"no route {self.path}")
            msgs = body["messages"]
            prompt = msgs[0]["content"] if isinstance(msgs[0]["content"], str) else msgs[0]["content"][0]["text"]
            prefill = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
        elif self.path.endswith("/chat/completions"):
            prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
            prefill = ""
            if st.require_max_completion_tokens and "max_tokens" in body:
                return self._send(400, {"error": {
                    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                               "Use 'max_completion_tokens' instead.",
                    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
        elif self.path.endswith("/completions"):
            prompt, prefill = body["prompt"], ""
        else:
            return self._error(404, f"no route {self.path}")
        rejected = st.reject(prompt)
        if rejected:
            return self._error(*rejected)
        if prompt not in st.answers:
            return self._error(400, "unknown prompt")
        text = st.reply(prompt, st.answers[prompt])
        if prefill and text.startswith(prefill):
            text = text[len(prefill):]
        n_in, n_out = len(prompt.split()), max(1, len(text))
        if self.flavour == "anthropic":
            return self._send(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                    "stop_sequence": None, "usage": {"input_tokens": n_in, "output_tokens": n_out}})
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if self.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        self._send(200, {"id": "x-1", "object": obj, "created": 0, "model": body["model"], "choices": [choice],
                         "usage": usage})


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that timed out
            super().handle_error(request, client_address)


class FakeServer:
    """A real HTTP server in a thread; `url` is its base URL (with /v1 for OpenAI clients)."""

    def __init__(self, state: ServerState, flavour: str = "openai") -> None:
        handler = type("Handler", (_Handler,), {"state": state, "flavour": flavour})
        self.state = state
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        host, port = self.httpd.server_address[:2]
        self.root = f"http://{host}:{port}"
        self.url = self.root + "/v1" if flavour == "openai" else self.root

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answers_of(path: Path) -> dict[str, int]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row.get("prompt", row.get("input"))] = int(row.get("answer", row.get("target")))
    return out


def files_containing(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` whose bytes contain `secret`."""
    return [str(p) for p in Path(folder).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
