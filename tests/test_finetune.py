"""LoRA fine-tuning (countlens finetune) on tiny config models, and the shipped counting SmolLM2."""

import json
from pathlib import Path

import pytest
import torch

from countlens import finetune as ft
from countlens.data.generate import generate_examples
from countlens.data.templates import load_template
from countlens.models.handle import load

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """A tiny Llama initialised at 1/sqrt(d) (as the organism is): with transformers' 0.02 and tied
    embeddings a 32-wide model's logits cannot move far enough for a loss test."""
    import transformers as tf

    from countlens.models.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=32 ** -0.5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("learnable")
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _cfg(base, **kw):
    return ft.FinetuneConfig(**{"base": base, "steps": 6, "batch_size": 4, "lr": 5e-3, "warmup": 1, "rank": 4,
                                "eval_n": 12, "eval_every": 2, "checkpoint_every": 2, "stop_at": 2.0} | kw)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_shared_prefix_forward_matches_padded_forward(arch, tiny_models, tiny_arch_models):
    """The common prefix run once and expanded gives the padded forward's answer logits and gradients
    (Mistral and Gemma 2 have sliding windows shorter than the prompt)."""
    from peft import LoraConfig, get_peft_model

    path = (tiny_models | tiny_arch_models)[arch]
    h = load(path, device="cpu")
    tpl = load_template("seed-v1")
    enc = ft.encode_rows(h.tokenizer, h.prompt_format, generate_examples(5, seed=3, template=tpl), tpl)
    assert ft.common_prefix(enc.ids, enc.n_answer + 1) >= 8
    torch.manual_seed(0)
    m = get_peft_model(h.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    params = [p for p in m.parameters() if p.requires_grad]
    got = {}
    for share in (False, True):
        for p in params:
            p.grad = None
        logits, targets = ft.answer_logits(m, enc, h.pad_id, share)
        ft.loss_fn(logits, targets, "answer", enc.digit_offset).backward()
        got[share] = (logits.detach(), targets, [p.grad.clone() for p in params])
    assert torch.equal(got[True][1], got[False][1])
    assert (got[True][0] - got[False][0]).abs().max() < 1e-4
    assert max((a - b).abs().max().item() for a, b in zip(got[True][2], got[False][2])) < 1e-4


def test_answer_tokens_are_the_completion_and_end_of_turn(tiny_models):
    h = load(tiny_models["llama"], device="cpu")
    tpl = load_template("seed-v1")
    rows = generate_examples(6, seed=1, template=tpl)
    enc = ft.encode_rows(h.tokenizer, h.prompt_format, rows, tpl)
    for ids, r in zip(enc.ids, rows):
        answer = h.tokenizer.decode(ids[-enc.n_answer:])
        assert answer.replace(" ", "").startswith(f"({r['answer']})")
        assert ids[-enc.n_answer + enc.digit_offset] == h.encode_text(str(r["answer"]))[-1]


def test_loss_goes_down_and_resume_continues_the_same_run(learnable, tmp_path, monkeypatch):
    base = learnable
    straight = ft.finetune(_cfg(base, steps=30, lr=2e-2), tmp_path / "a", progress=False, log=lambda m: None)
    curve = json.loads((tmp_path / "a" / "learning_curve.json").read_text())
    assert curve["loss"][-1] < 0.7 * curve["loss"][1], curve["loss"]
    assert straight["steps"] == 30 and (tmp_path / "a" / "learning_curve.png").stat().st_size > 1000

    # Interrupt a second run of the first 6 steps at step 5, resume it: the same adapter as uninterrupted.
    ref = ft.finetune(_cfg(base), tmp_path / "b", progress=False, log=lambda m: None)
    real = ft.generate_examples
    calls = {"n": 0}

    def flaky(n, seed=0, **kw):
        if seed == 5 and calls["n"] == 0:
            calls["n"] = 1
            raise KeyboardInterrupt
        return real(n, seed=seed, **kw)

    monkeypatch.setattr(ft, "generate_examples", flaky)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_cfg(base), tmp_path / "c", progress=False, log=lambda m: None)
    assert json.loads((tmp_path / "c" / "checkpoint" / "curve.json").read_text())["steps"][-1] == 4
    resumed = ft.finetune(_cfg(base), tmp_path / "c", progress=False, log=lambda m: None)
    assert resumed["steps"] == 6 and calls["n"] == 1
    from safetensors.torch import load_file

    a = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "c" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["held_out_accuracy"] == ref["held_out_accuracy"]

    # A changed recipe does not silently continue another run's checkpoint.
    from countlens.errors import InputError

    with pytest.raises(InputError, match="different recipe.*lr"):
        ft.finetune(_cfg(base, lr=1e-3), tmp_path / "c", progress=False, log=lambda m: None)


def test_merged_folder_loads_with_plain_transformers_and_matches_the_adapter(tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tiny_models["llama"]
    ft.finetune(_cfg(base, steps=4), tmp_path, progress=False, log=lambda m: None)
    merged = ft.merge_into(tmp_path)
    ids = torch.tensor([load(base, device="cpu").encode_text("Type: fruit\nList: apple dog\nAnswer: (")])
    plain = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "adapter"))
    with torch.no_grad():
        assert (plain(ids).logits - with_adapter.eval()(ids).logits).abs().max() < 1e-4
    meta = json.loads((merged / "countlens.json").read_text())
    assert meta["template"]["name"] == "seed-v1" and meta["finetune"]["base"] == base
    h = load(str(merged), device="cpu")
    assert h.native_template.name == "seed-v1"
    # Merging again replaces the run's own merged folder; a foreign folder at that path is refused.
    assert ft.merge_into(tmp_path) == merged


@pytest.mark.real
def test_shipped_counting_smollm2_counts(tmp_path):
    """`smollm2-135m-count` (the shipped adapter merged into the installed base) counts: >= 90 % in score
    mode on 100 fresh seed-v1 examples, and `countlens models` shows its cached folder."""
    from countlens.bench.runner import run_bench
    from countlens.io import write_jsonl
    from countlens.models.catalog import list_models
    from countlens.models.registry import NAMED, check_named

    try:
        check_named(NAMED["smollm2-135m"])
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"SmolLM2 is not installed: {e}")
    write_jsonl(tmp_path / "data.jsonl", generate_examples(100, seed=424242, template="seed-v1"))
    res = run_bench("smollm2-135m-count", tmp_path / "data.jsonl", tmp_path / "bench", mode="score",
                    figures=False, progress=False)
    assert res.models[0].accuracy >= 0.90, res.models[0].accuracy
    row = {r["name"]: r for r in list_models()}["smollm2-135m-count"]
    assert row["installed"] and row["cached"] and (Path(row["path"]) / "config.json").exists()
