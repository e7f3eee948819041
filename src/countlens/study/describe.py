"""What the report says about the model and its prompts: written once per study as model.json.

A reader should see the prompt exactly as the model saw it: the format, the system prompt the
chat template adds by default, the BOS rule, and one tokenized prompt with its named positions
(the category, each list word's last token, the answer position).
"""

from __future__ import annotations

from typing import Any

from countlens.models import prompts


def describe_model(handle: Any, template: Any, row: dict) -> dict:
    """Architecture, prompt format and one example prompt's tokens with named positions."""
    from countlens.interp.acts import read_rows, locate

    cfg = handle.model.config
    param = next(handle.model.parameters())
    tok = handle.tokenizer
    pr = read_rows([row], template=template)[0]
    locate(handle, pr, ["prefix", "items", "last"])
    names: dict[int, str] = {}
    for kind, item, t in pr.positions:
        names[t] = {"prefix": "category", "last": "answer position"}.get(kind, f"word {item} ({pr.words[item]})"
                                                                        + (" match" if pr.match[item] else ""))
    tokens = [{"i": i, "id": int(t), "text": tok.decode([t]), "name": names.get(i)} for i, t in enumerate(pr.tokens)]
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    return {
        "name": handle.name, "path": handle.path, "architecture": type(handle.model).__name__,
        "model_type": getattr(cfg, "model_type", None), "n_layers": handle.n_layers,
        "d_model": getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None), "n_heads": n_heads,
        "n_kv_heads": getattr(cfg, "num_key_value_heads", None) or n_heads,
        "parameters": sum(p.numel() for p in handle.model.parameters()),
        "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device),
        "prompt_format": handle.prompt_format, "bos_rule": prompts.bos_kind(tok),
        "bos_token": getattr(tok, "bos_token", None),
        "default_system_prompt": prompts.default_system_prompt(tok) if handle.prompt_format == "chat" else None,
        "template": template.name, "answer_prefix": template.answer_prefix,
        "gguf": handle.info.get("gguf"),
        "finetune": handle.info.get("finetune"),
        "example": {"answer": pr.answer, "text": handle.format(template.render(pr.category, pr.words))
                    + template.answer_prefix, "tokens": tokens},
    }
