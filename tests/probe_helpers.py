"""Small random-weight models and datasets for the probe tests (built locally, no hub)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_model(path: Path, tokenizer=None, arch: str = "llama", n_layers: int = 2) -> str:
    """A random-weight model saved with `tokenizer` (default: the organism's) and the seed-v1 template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from countlens.models.organism.tokenizer import build_tokenizer

    tok = tokenizer or build_tokenizer()
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               tie_word_embeddings=True)
    cls, cfg = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    model = cls(cfg(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                    num_attention_heads=4, num_key_value_heads=2, **ids))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (Path(path) / "countlens.json").write_text(json.dumps({"template": "seed-v1"}))
    return str(path)
