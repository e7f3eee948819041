"""`kill -9` mid-run, then the same command: no finished record lost or duplicated, and the same
table as an uninterrupted run, against a server that fails 30 % of requests."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from countlens.backends import RetryPolicy
from countlens.bench.runner import run_bench
from countlens.data.generate import generate_dataset

from bench_support import PLANTED_KEY, FakeServer, ServerState, answers_of, files_containing


def _count(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 48, seed=9)
    reply = lambda p, n: "(2)" if n == 3 else f"({n})"  # noqa: E731 - some wrong answers, so the table is not trivial
    st = ServerState(answers_of(data), fault_rate=0.3, seed=4, delay=0.04, reply=reply)
    out = tmp_path / "killed"
    db = out / "records.sqlite"
    with FakeServer(st) as srv:
        spec = f"openai:counter@{srv.url}"
        cmd = [sys.executable, "-m", "countlens", "bench", "--model", spec, "--data", str(data), "--out", str(out),
               "--concurrency", "2", "--json"]
        env = {**os.environ, "OPENAI_API_KEY": PLANTED_KEY, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 60
        while _count(db) < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = _count(db)
        assert proc.returncode == -signal.SIGKILL and 10 <= killed_at < 48, (killed_at, proc.returncode)
        with sqlite3.connect(db) as c:
            finished = {e for (e,) in c.execute("SELECT example_id FROM records WHERE status = 'ok'")}
        prompt_of = {json.loads(line)["id"]: json.loads(line)["prompt"] for line in data.read_text().splitlines()}

        before = len(st.requests)
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0, again.stderr[-2000:]
        resumed = json.loads(again.stdout)
        asked_after = {r["body"]["messages"][0]["content"] for r in st.requests[before:]}
        reference = run_bench([spec], data, tmp_path / "clean", concurrency=2, progress=False, figures=False,
                              retry=RetryPolicy(base=0.0, cap=0.0, max_retries=20))

    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT key, example_id, status FROM records").fetchall()
    assert len(rows) == 48 == len({k for k, _, _ in rows}) == len({e for _, e, _ in rows})
    assert all(s == "ok" for _, _, s in rows)
    assert resumed["models"][0]["completed"] == 48
    # finished records were not asked again; everything else was
    assert asked_after == {prompt_of[e] for e in prompt_of if e not in finished}
    # the same table as an uninterrupted run (every model metric, slices, confusion, tokens)
    mine = resumed["models"][0]
    ref = reference.to_dict()["models"][0]
    mine["tokens"].pop("attempts"), ref["tokens"].pop("attempts")   # retries differ from run to run
    assert mine == ref
    assert ref["accuracy"] < 1 and ref["by_count"]["3"]["accuracy"] == 0
    assert files_containing(out, PLANTED_KEY) == []
