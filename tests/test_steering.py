import json

import pytest
import torch

from conftest import run_cli
from countlens.data.generate import generate_examples
from countlens.interp.sites import Site
from countlens.interp.steering import SteerOptions, count_logprobs, encode_rows, run_steering
from countlens.models.handle import load


def test_scale_zero_reproduces_the_unsteered_logits_exactly(tiny_models):
    h = load(tiny_models["llama"], device="cpu")
    tpl = h.template("short")
    enc = encode_rows(h, generate_examples(8, 1, template="short"), tpl)
    toks = [a[0] for a in h.answer_tokens(5)]
    idx = list(range(8))
    base = count_logprobs(h, enc, idx, toks)
    v = torch.randn(8, h.model.config.hidden_size).numpy()
    for positions in ("last", "from-list", "all"):
        zero = count_logprobs(h, enc, idx, toks, Site("resid", 1), v, 0.0, positions)
        assert torch.equal(zero, base)
        # a hook that adds an exact zero vector is also a no-op
        same = count_logprobs(h, enc, idx, toks, Site("resid", 1), v * 0, 1.0, positions)
        assert torch.allclose(same, base, atol=1e-6)
        moved = count_logprobs(h, enc, idx, toks, Site("resid", 1), v, 5.0, positions)
        assert not torch.allclose(moved, base)


@pytest.fixture(scope="module")
def organism_steer():
    h = load("organism", device="cpu")
    rows = generate_examples(500, 21, template=h.template())
    opts = SteerOptions(scales=(0.0, 1.0, 2.0, 3.0, -1.0), generate=True, batch_size=150)
    return h, run_steering(h, rows, opts)


def test_one_more_succeeds_on_the_organism_and_random_does_not(organism_steer):
    """The issue's target on the shipped organism, at the best layer before the last block and its
    best scale, on held-out examples: N -> N+1 for >= 80 % with N in 0..4, random vector <= 10 %.

    Measured: block 2, scale 1, 89.1 % [84.6, 93.5] (by N 100 / 90 / 91 / 69 / 93 %), random 2.5 %.
    """
    h, res = organism_steer
    best = res.summary["best"]
    assert best["layer"] == h.n_layers - 2  # chosen before the last block
    assert best["success_rate"] >= 0.80
    assert best["control_success_rate"] <= 0.10
    assert set(best["by_n"]) == {"0", "1", "2", "3", "4"}
    assert min(best["by_n"].values()) >= 0.5  # no count class is left behind
    assert best["wrong_way"] <= 0.02
    assert res.summary["mean-diff"]["last_block"]["success_rate"] >= 0.95  # almost by construction
    assert res.summary["unsteered_accuracy"] >= 0.98
    gen = {g["vector"]: g for g in res.summary["generate"]}
    assert gen["none"]["correct_rate"] >= 0.98 and gen["mean-diff"]["parse_rate"] >= 0.9
    t = res.table
    zero = t[t.scale == 0]
    assert (zero.answer == zero.base_answer).all()


def test_steer_cli(tmp_path):
    data = tmp_path / "d.jsonl"
    run_cli("data", "generate", "--n", "200", "--seed", "5", "--out", str(data), check=True)
    out = tmp_path / "steer"
    proc = run_cli("steer", "--data", str(data), "--out", str(out), "--layers", "1,2", "--scales", "1,2",
                   "--vector", "mean-diff", "--no-generate", "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["best"]["layer"] in (1, 2) and s["layers"] == ["1", "2"]
    assert (out / "steer_dose_response.png").exists() and (out / "table.parquet").exists()
    bad = run_cli("steer", "--data", str(data), "--out", str(out), "--vector", "nope")
    assert bad.returncode == 2 and "mean-diff" in bad.stderr
