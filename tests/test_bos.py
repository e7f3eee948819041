"""BOS for the three kinds of tokenizer (adds it itself / has one but does not add it / has none), both formats."""

import pytest
import torch
from tokenizers import processors

from countlens.models import prompts
from countlens.models.organism.tokenizer import BOS, build_tokenizer

PROMPT = "Type: fruit\nList: apple pear\nAnswer: "


def tokenizer_of(kind: str):
    tok = build_tokenizer()
    if kind == "adds":   # Llama / Gemma / Mistral style: the post-processor prepends BOS
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, tok.bos_token_id)])
    elif kind == "none":  # Qwen2 style
        tok.bos_token = None
    return tok


@pytest.mark.parametrize("kind", ["adds", "has", "none"])
def test_raw_format_has_exactly_the_right_bos(kind):
    tok = tokenizer_of(kind)
    assert prompts.bos_kind(tok) == kind
    ids = prompts.encode(tok, prompts.format_prompt(tok, PROMPT, "raw"))
    bos_id = build_tokenizer().bos_token_id
    if kind == "none":
        assert bos_id not in ids
    else:
        assert ids[0] == bos_id and ids.count(bos_id) == 1, ids
    if kind == "adds":  # what the tokenizer itself would give the model
        assert ids == tok(PROMPT)["input_ids"]
    # a prompt that already starts with BOS is not given a second one
    again = prompts.encode(tok, prompts.format_prompt(tok, (BOS if kind != "none" else "") + PROMPT, "raw"))
    assert again == ids


@pytest.mark.parametrize("kind", ["adds", "has", "none"])
def test_chat_format_bos_comes_from_the_template_once(kind):
    tok = tokenizer_of(kind)
    ids = prompts.encode(tok, prompts.format_prompt(tok, PROMPT, "chat"))
    bos_id = build_tokenizer().bos_token_id
    if kind == "none":  # the template renders {{ bos_token }} as empty
        assert bos_id not in ids
    else:
        assert ids[0] == bos_id and ids.count(bos_id) == 1


def test_bos_reaches_the_model_through_load(tmp_path):
    """The old bug: an add-BOS tokenizer in raw format got no BOS at all in every stage."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from countlens.models.handle import load

    tok = tokenizer_of("adds")
    tok.chat_template = None
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    h = load(str(tmp_path), device="cpu")
    assert h.prompt_format == "raw"
    ids = h.encode_text(h.format(PROMPT))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_default_system_prompt_is_found():
    tok = build_tokenizer()
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}<|system|>\nBe brief.<|end|>\n{% endif %}"
                         "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    assert prompts.default_system_prompt(tok) == "Be brief."
    assert prompts.default_system_prompt(build_tokenizer()) is None  # the organism's template adds none
