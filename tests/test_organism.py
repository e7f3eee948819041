import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from countlens.data.answers import parse_strict
from countlens.errors import InputError
from countlens.models.handle import load
from countlens.models.organism.evaluate import evaluate
from countlens.models.registry import organism_path


def test_shipped_organism_loads_with_plain_transformers_and_no_countlens_import():
    code = f"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(organism_path())!r})
model = AutoModelForCausalLM.from_pretrained({str(organism_path())!r})
text = tok.apply_chat_template([{{"role": "user", "content": "Type: fruit"}}], tokenize=False, add_generation_prompt=True)
ids = tok(text + "(", add_special_tokens=False)["input_ids"]
assert ids[:-1] == tok(text, add_special_tokens=False)["input_ids"] and tok.convert_ids_to_tokens(ids[-1]) == "("
assert all(len(tok(str(d), add_special_tokens=False)["input_ids"]) == 1 for d in range(10))
assert "countlens" not in sys.modules
print(type(model).__name__, model.config.num_hidden_layers)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["LlamaForCausalLM", "4"]
    size = sum(f.stat().st_size for f in organism_path().glob("*.safetensors"))
    assert size <= 10 * 2**20


def test_shipped_organism_counts_on_500_fresh_examples():
    h = load("organism", device="cpu")
    assert h.native_template.name == json.loads((organism_path() / "countlens.json").read_text())["template"]
    res = evaluate(h, n=500, seed=777)
    assert res["accuracy"] >= 0.99 and res["accuracy_strict"] >= 0.99
    assert parse_strict(res["example_output"]) is not None


def test_organism_info_cli():
    info = json.loads(run_cli("organism", "info", "--json", check=True).stdout)
    assert info["accuracy"] >= 0.99 and info["n_layers"] >= 4 and info["architecture"] == "LlamaForCausalLM"
    assert info["eval"]["n"] == 2000
    assert run_cli("organism", "path", check=True).stdout.strip() == str(organism_path())


def test_a_short_training_run_lowers_the_loss(tmp_path):
    from countlens.models.organism.train import Recipe, train

    r = Recipe(steps=160, phase_a_steps=120, curriculum_steps=100, eval_every=40, eval_n=32, d_model=32,
               n_layers=2, n_heads=2, d_mlp=64, warmup=10, min_steps_b=1000, iit_steps=40)
    meta = train(tmp_path / "org", r, progress=False, final_eval_n=20, threads=1)
    curve = json.loads((tmp_path / "org" / "learning_curve.json").read_text())
    assert curve[-2]["loss"] < 0.6 * curve[0]["loss"]
    assert [p["step"] for p in curve if p.get("phase") == "C"] == [200]  # phase C after A+B's 160 steps
    assert 0.0 <= curve[-1]["interchange"] <= 1.0
    assert (tmp_path / "org" / "learning_curve.png").stat().st_size > 1000
    assert meta["steps"] == 200 and load(str(tmp_path / "org"), device="cpu").n_layers == 2
    # resuming a finished run trains no further step and reproduces the same folder
    meta2 = train(tmp_path / "org", r, progress=False, final_eval_n=20, threads=1)
    assert meta2["steps"] == 200
    # --iit-steps 0 stops after phase B; --from runs phase C alone on that folder, history carried over
    ab = train(tmp_path / "ab", dataclasses.replace(r, iit_steps=0), progress=False, final_eval_n=20, threads=1)
    assert ab["steps"] == 160
    c = train(tmp_path / "c", dataclasses.replace(r, iit_steps=20), progress=False, final_eval_n=20, threads=1,
              init_from=tmp_path / "ab")
    curve_c = json.loads((tmp_path / "c" / "learning_curve.json").read_text())
    assert c["steps"] == 180 and curve_c[:-1] == json.loads((tmp_path / "ab" / "learning_curve.json").read_text())
    assert curve_c[-1]["phase"] == "C" and curve_c[-1]["step"] == 180


def test_phase_c_starts_only_from_a_matching_phase_ab_folder(tmp_path):
    from countlens.models.organism.train import Recipe, train
    from countlens.models.registry import organism_path

    with pytest.raises(SystemExit, match="another phase A/B recipe.*n_layers"):
        train(tmp_path / "x", Recipe(n_layers=6), progress=False, init_from=organism_path())
    with pytest.raises(SystemExit, match="phase C already"):
        train(tmp_path / "y", Recipe(), progress=False, init_from=organism_path())
    with pytest.raises(InputError, match="not an organism folder"):
        train(tmp_path / "z", Recipe(), progress=False, init_from=tmp_path / "nothing")
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_the_organism_carries_its_count_into_the_last_block_at_the_answer_position():
    """Phase C's promise, measured on fresh prompts: swapping block L-2's output at `(` between two
    prompts makes the organism answer the other prompt's count (before phase C: 26 %; 20 % of pairs share
    their count)."""
    import random

    from countlens.data.lexicon import load_lexicon
    from countlens.models.organism.train import Recipe, interchange_loss, iit_layer, sample_batch

    h = load("organism", device="cpu")
    recipe = Recipe(aux_frac=0.0)
    seqs, starts = sample_batch(random.Random(5), recipe, recipe.steps, h.tokenizer, load_lexicon("clean-v1"))
    with torch.no_grad():
        _, follows = interchange_loss(h, seqs, starts, iit_layer(recipe), torch.Generator().manual_seed(0))
    assert follows >= 0.9


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_handle_on_models_built_from_configs(tiny_models, arch):
    if arch not in tiny_models:
        pytest.skip("the real Qwen tokenizer (../shared/fixtures) is absent")
    h = load(tiny_models[arch], device="cpu")
    assert h.n_layers == 3 and h.prompt_format == "chat"
    ans = h.answer_tokens(12)
    assert all(len(a) == 1 for a in ans[:10])
    if arch == "qwen2":
        assert len(ans[10]) == 2  # Qwen splits digits: 10 and up take two tokens
    raw = load(tiny_models[arch], device="cpu", prompt_format="raw")
    assert raw.format("hello") in ("hello", "<s>hello")


def test_unreachable_hub_name_is_one_clear_line():
    with pytest.raises(InputError) as e:
        load("Qwen/Qwen2.5-1.5B-Instruct")
    msg = str(e.value)
    assert "\n" not in msg and "Qwen/Qwen2.5-1.5B-Instruct" in msg and "local" in msg

def test_unreachable_tokenizer_in_the_cli_exits_2(tmp_path):
    data = tmp_path / "d.jsonl"
    run_cli("data", "generate", "--n", "10", "--out", str(data), check=True)
    proc = run_cli("data", "pairs", "--data", str(data), "--tokenizer", "no-such-org/no-such-model", "--n", "5",
                   "--out", str(tmp_path / "p.jsonl"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no-such-org/no-such-model" in proc.stderr and not (tmp_path / "p.jsonl").exists()
