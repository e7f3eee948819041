"""accelerate dispatch (`--device-map auto`, `--max-memory`, `--offload-folder`) changes where weights
live, never a number: a study whose organism has part of its layers offloaded to disk (accelerate's
AlignDevicesHook path, the one a multi-GPU split takes) writes the same summaries as the plain run."""

import json

import pytest
import torch

from golden_check import differences, summaries
from countlens.study.config import build_config
from countlens.study.run import run_study

TINY = dict(data={"n": 90}, pairs={"n": 4}, bench={"n": 24}, patch={"sites": ["resid", "head"], "positions": "last"},
            probes={"n": 90, "folds": 2}, steer={"n": 90, "scales": [0.0, 1.0], "generate_n": 6},
            analyses={"n": 20, "run": ["lens", "dla"]})


def _exact(old, new) -> list[str]:
    import golden_check

    atol, rtol = golden_check.ATOL, golden_check.RTOL
    golden_check.ATOL, golden_check.RTOL = 1e-6, 1e-6
    try:
        return differences(old, new)
    finally:
        golden_check.ATOL, golden_check.RTOL = atol, rtol


def test_offloaded_dispatch_writes_the_same_study(tmp_path):
    from countlens.models.handle import load

    # the split the test relies on: embeddings and block 0 held on the CPU, blocks 1-3 on disk
    h = load("organism", device_map="auto", max_memory="cpu=3MB", offload_folder=str(tmp_path / "off0"))
    where = set(h.model.hf_device_map.values())
    assert where == {"cpu", "disk"}, h.model.hf_device_map
    assert any(p.device.type == "meta" for p in h.model.parameters())     # weights stream in per forward
    del h

    plain = run_study(build_config(preset="quick", **TINY), tmp_path / "plain", log=lambda m: None)
    split = run_study(build_config(preset="quick", device_map="auto", max_memory="cpu=3MB",
                                   offload_folder=str(tmp_path / "offload"), **TINY), tmp_path / "split",
                      log=lambda m: None)
    a, b = summaries(tmp_path / "plain"), summaries(tmp_path / "split")
    for stage in ("bench/generate", "patch", "probes", "steer", "analyses/lens"):
        assert stage in a, sorted(a)
    assert sorted(a) == sorted(b)
    assert _exact(a, b) == []


def test_max_memory_needs_a_device_map():
    from countlens.errors import InputError
    from countlens.models.handle import load, parse_max_memory

    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=64GiB") == {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    with pytest.raises(InputError, match="DEVICE=SIZE"):
        parse_max_memory("20GiB")
    with pytest.raises(InputError, match="--device-map"):
        load("organism", max_memory="cpu=1GB")
