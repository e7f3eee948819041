"""On the shipped organism: the count is linearly decodable at the last token, far above what a
probe on the input words alone reads, and absent at the embedding of the constant last token."""

from pathlib import Path

import pytest

from countlens.data.generate import generate_dataset
from countlens.interp.acts import collect_activations
from countlens.interp.probes import run_probes
from countlens.models.registry import organism_path

ORGANISM = Path(organism_path())
needs_organism = pytest.mark.skipif(not (ORGANISM / "config.json").exists(),
                                    reason=f"the organism's weights are not in {ORGANISM} yet")


@needs_organism
def test_best_layer_reads_the_count_far_above_the_input_baseline(tmp_path):
    from countlens.models.handle import load

    data = tmp_path / "d.jsonl"
    generate_dataset(data, 420, seed=11)
    handle = load("organism", device="cpu")
    collect_activations(handle, data, tmp_path / "acts", positions="last", batch_size=64, progress=False)
    res = run_probes(tmp_path / "acts", n_boot=300, progress=False, n_jobs=1)
    s = res.summary
    assert [r["layer"] for r in s["per_layer"]] == ["emb", *range(handle.n_layers)]
    best, base = s["best_layer"], s["input_baseline"]
    assert best["accuracy"] >= 0.95, s["per_layer"]
    assert best["accuracy"] >= base["accuracy"] + 0.3 and best["ci_low"] > base["ci_high"], (best, base)
    assert best["r2"] >= 0.9
    # every example ends in the same token "(": its embedding cannot tell counts apart
    emb = s["per_layer"][0]
    assert emb["accuracy"] <= s["majority"]["accuracy"] + 0.05
