"""The whole toolkit on a real pretrained model: SmolLM2-135M-Instruct (GGUF from PyPI, dequantized).

Marked `real` (skip locally with `-m "not real"`; CI runs them). The setup (`make`) installs the
model package; without it these tests skip with the install command as the reason.
"""

import json

import pytest
import torch

from conftest import run_cli
from countlens.models.registry import NAMED, named_gguf

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(named_gguf(NAMED["smollm2-135m"]) is None,
                                 reason=f"SmolLM2 is not installed: {NAMED['smollm2-135m'].install}")]


@pytest.fixture(scope="module")
def smol():
    from countlens.models.handle import load

    return load("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def smol_pairs(tmp_path_factory, smol):
    from countlens.data.generate import generate_dataset
    from countlens.data.pairs import build_pairs
    from countlens.interp.patching import load_pairs

    d = tmp_path_factory.mktemp("smolpairs")
    generate_dataset(d / "data.jsonl", 200, seed=3, template="seed-v1")
    summary = build_pairs(d / "data.jsonl", smol.tokenizer, 8, d / "pairs.jsonl", template="seed-v1")
    return load_pairs(d / "pairs.jsonl"), summary


def test_named_model_is_the_pinned_gguf_converted_once(smol):
    m = NAMED["smollm2-135m"]
    g = smol.info["gguf"]
    assert g["sha256"] == m.sha256 and g["gguf"].endswith(m.file)
    cfg = smol.model.config
    assert (type(smol.model).__name__, smol.n_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads) == ("LlamaForCausalLM", 30, 576, 9, 3)
    assert not hasattr(cfg, "quantization_config")
    listed = json.loads(run_cli("models", "--json", check=True).stdout)["models"]
    row = next(r for r in listed if r["name"] == "smollm2-135m")
    assert row["installed"] and row["cached"] and row["path"] == smol.path and row["size_mb"] > 400


def test_cached_folder_equals_transformers_reading_the_gguf(smol):
    """The converted folder holds exactly the weights transformers dequantizes from the file."""
    from transformers import AutoModelForCausalLM

    f = named_gguf(NAMED["smollm2-135m"])
    direct = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32).eval()
    ids = torch.tensor([smol.encode_text(smol.format("Type: fruit\nList: apple chair\nAnswer: ") + "(")])
    with torch.no_grad():
        a, b = smol.model(ids).logits, direct(ids).logits
    assert (a - b).abs().max().item() < 1e-5


def test_answer_tokens_bos_and_chat_format(smol):
    answers = smol.answer_tokens(5)
    assert all(len(a) == 1 for a in answers)
    assert [smol.tokenizer.decode(a) for a in answers] == [str(n) for n in range(6)]
    ids = smol.encode_text(smol.format("Type: fruit\nList: apple\nAnswer: "))
    assert smol.prompt_format == "chat"
    assert ids[0] == smol.tokenizer.bos_token_id and ids.count(smol.tokenizer.bos_token_id) == 3  # 3 turns


def test_pairs_are_aligned_under_the_bpe_tokenizer(smol, smol_pairs):
    pairs, summary = smol_pairs
    assert len(pairs) == summary["pairs"] >= 6
    for p in pairs:
        a = smol.encode_text(smol.format(p["low"]["prompt"]) + "(")
        b = smol.encode_text(smol.format(p["high"]["prompt"]) + "(")
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert len(a) == len(b) and diff and diff[-1] - diff[0] < 8
        assert p["high"]["answer"] == p["low"]["answer"] + 1


def test_last_layer_patch_is_one_and_embedding_patch_zero(smol, smol_pairs):
    from countlens.interp.patching import PatchOptions, run_patching

    pairs, _ = smol_pairs
    res = run_patching(smol, pairs[:4], PatchOptions(sites=("resid",), positions="last", filter="none"))
    t = res.table
    norm = t[(t.metric == "normalized") & (t.position == -1)]
    last = norm[norm.layer == str(smol.n_layers - 1)].value
    emb = norm[norm.layer == "emb"].value
    # The last block's output at the answer position is the source run: 1.000 (the ratio of a tiny
    # logit-difference gap, ~0.01 logits on this weak model, amplifies float32 rounding to ~1e-4).
    assert (last - 1).abs().max() < 5e-4
    assert emb.abs().max() < 5e-4  # 0.000: the answer position's input token '(' is the same in both prompts


def test_fast_equals_reference_on_smollm2_every_site(smol, smol_pairs):
    """Every site incl. the 9 query heads of this GQA model; the reference (a full forward per
    configuration) runs on three layers to keep the suite short, the fast sweep on all of them."""
    from countlens.interp.patching import PatchOptions, run_patching

    pairs, _ = smol_pairs
    key = ["pair", "direction", "site", "layer", "position", "head", "metric"]
    sites = ("resid", "attn", "mlp", "head")
    fast = run_patching(smol, pairs[:2], PatchOptions(sites=sites, positions="last", filter="none")).table
    assert len(fast) == 2 * 4 * (31 + 30 + 30 + 30 * 9)
    assert set(fast[fast.site == "head"]["head"]) == set(range(9))
    ref = run_patching(smol, pairs[:2], PatchOptions(sites=sites, positions="last", filter="none", method="reference",
                                                     layers=("emb", 0, 14, 29))).table
    m = fast.merge(ref, on=key, suffixes=("_f", "_r"))
    assert len(m) == len(ref) == 2 * 4 * (4 + 3 + 3 + 27)
    for metric in ("logit_diff", "p_target"):
        x = m[m.metric == metric]
        assert (x.value_f - x.value_r).abs().max() < 1e-4, metric


def test_reduced_study_end_to_end_with_a_report(tmp_path):
    cfg = tmp_path / "study.yaml"
    # the layer grids of the deep quick preset when the golden summaries were stored (it now patches
    # the list words on 8 layers and steers on a subset of the probe layers), and a short analyses stage
    cfg.write_text("model: smollm2-135m\ndata: {n: 60}\npairs: {n: 4}\nbench: {n: 24}\n"
                   "patch: {generate: false, named_layers: [emb, 0, 3, 6, 10, 13, 16, 19, 23, 26, 29]}\n"
                   "probes: {n: 60, folds: 2}\nanalyses: {n: 20}\n"
                   "steer: {n: 60, scales: [0.0, 1.0], generate: false, layers: [emb, 0, 5, 10, 14, 19, 24, 29]}\n")
    out = tmp_path / "run"
    proc = run_cli("run", str(cfg), "--out", str(out), "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["skipped"] == []
    resolved = (out / "config.yaml").read_text()
    assert "positions: named" in resolved and "component_positions: last" in resolved  # a deep model's grid
    patch = json.loads((out / "patch" / "summary.json").read_text())
    assert patch["filter_fallback"] and patch["kept_pairs"] == 4  # a weak model: all aligned pairs patched
    model = json.loads((out / "model.json").read_text())
    assert model["prompt_format"] == "chat" and "SmolLM" in model["default_system_prompt"]
    assert any(t["name"] == "answer position" for t in model["example"]["tokens"])
    report = (out / "report.md").read_text()
    for text in ("does NOT count above chance", "FALLBACK", "dequantized", "system prompt", "answer position"):
        assert text in report, text
    assert "stage has not run" not in report
    from golden_check import check

    assert check(out, "smollm2") == []  # the same numbers as before the architecture change
