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


def _save_tiny(path, arch: str, tokenizer):
    """A random-weight model of `arch` saved with `tokenizer` into `path` (loads through models.load)."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, **ids))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, **ids))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of random-weight Llama and GPT-2 (organism tokenizer) and Qwen2 (real Qwen tokenizer)."""
    from countlens.models.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    root = tmp_path_factory.mktemp("tiny")
    out = {"llama": _save_tiny(root / "llama", "llama", tok), "gpt2": _save_tiny(root / "gpt2", "gpt2", tok)}
    if QWEN_TOKENIZER.exists():
        from transformers import AutoTokenizer

        out["qwen2"] = _save_tiny(root / "qwen2", "qwen2", AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER)))
    return out
