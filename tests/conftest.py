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


def run_cli(*args: str, check: bool = False, env: dict | None = None):
    """Run the real console script in a subprocess; returns CompletedProcess."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "countlens", *args], capture_output=True, text=True,
                          env={**(os.environ if env is None else env), "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"countlens {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def _tiny_config(arch: str, vocab: int, ids: dict):
    """A few-layer, 32-64 wide config of `arch` (GQA where the architecture has it)."""
    import transformers as tf

    small = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, **ids)
    if arch == "llama":
        return tf.LlamaForCausalLM, tf.LlamaConfig(**small)
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM, tf.Qwen2Config(**small)
    if arch == "gpt2":
        return tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, **ids)
    if arch == "gemma2":
        # head_dim != hidden / heads; sliding window 6 on alternating layers (prompts are ~40 tokens);
        # attention and final logit soft-capping; sqrt(d) embedding scale; norms around each sub-layer
        return tf.Gemma2ForCausalLM, tf.Gemma2Config(
            **small | dict(num_hidden_layers=4), head_dim=12, sliding_window=6, query_pre_attn_scalar=12,
            layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=5.0,
            attn_logit_softcapping=20.0)
    if arch == "gemma3":
        return tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(
            **small | dict(hidden_size=48, num_attention_heads=2, num_key_value_heads=1), head_dim=16,
            sliding_window=5, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "mistral":
        return tf.MistralForCausalLM, tf.MistralConfig(**small, sliding_window=7)
    if arch == "phi3":  # fused qkv_proj / gate_up_proj, partial rotary
        return tf.Phi3ForCausalLM, tf.Phi3Config(**small, sliding_window=8, partial_rotary_factor=0.5,
                                                 original_max_position_embeddings=4096)
    if arch == "neox":  # `attention` with `dense`, parallel residual, partial rotary, biases
        return tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            use_parallel_residual=True, rotary_pct=0.5, **ids)
    raise ValueError(f"no tiny config for {arch}")


TINY_ARCHS = ("gemma2", "gemma3", "mistral", "phi3", "neox")  # besides llama, qwen2, gpt2


def _save_tiny(path, arch: str, tokenizer):
    """A random-weight model of `arch` saved with `tokenizer` into `path` (loads through models.load)."""
    import torch

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    cls, config = _tiny_config(arch, len(tokenizer), ids)
    model = cls(config)
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


@pytest.fixture(scope="session")
def tiny_arch_models(tmp_path_factory):
    """Folders of random-weight Gemma 2, Gemma 3 (text), Mistral, Phi-3 and GPT-NeoX (organism tokenizer)."""
    from countlens.models.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    root = tmp_path_factory.mktemp("tiny_arch")
    return {arch: _save_tiny(root / arch, arch, tok) for arch in TINY_ARCHS}
