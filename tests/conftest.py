import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_FILE = SHARED / "external" / "seed_counting_dataset.jsonl"
QWEN_TOKENIZER = SHARED / "fixtures" / "qwen-tokenizer"

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

needs_seed_file = pytest.mark.skipif(not SEED_FILE.exists(),
                                     reason=f"the original study's dataset is not at {SEED_FILE} (../shared is absent)")
needs_qwen = pytest.mark.skipif(not QWEN_TOKENIZER.exists(),
                                reason=f"the real Qwen tokenizer is not at {QWEN_TOKENIZER} (../shared is absent)")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    if not QWEN_TOKENIZER.exists():
        pytest.skip(f"the real Qwen tokenizer is not at {QWEN_TOKENIZER} (../shared is absent)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))


def run_cli(*args: str, check: bool = False):
    """Run the real console script in a subprocess; returns CompletedProcess."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "countlens", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"countlens {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc
