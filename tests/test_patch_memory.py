"""Bounded memory of the fast patching path: rows are chunked to `PatchOptions.memory_budget`.

The chunking is checked through `patching.FORWARD_PROBE` (rows and estimated bytes of every
forward), the estimate against allocations measured by torch's profiler (CPU allocator, every
allocation and free, `profile_memory=True`), and the whole sweep's measured peak against the
budget. Results must not depend on the budget.
"""

import contextlib
import json
import os
import tempfile

import pytest
from torch.profiler import ProfilerActivity, profile

from countlens.interp import patching
from countlens.interp.patching import PatchOptions, run_patching
from countlens.models.handle import load
from test_patching import KEY, make_pairs

SITES = ("resid", "attn", "mlp", "head")
BUDGET = 400_000  # bytes: above one batch's base forward (3 pairs), ~1/5 of an unchunked sweep's peak


def _peak_of(prof) -> int:
    """Peak bytes the CPU allocator held above its level when `prof` started, from the profiler's
    memory events ("Total Allocated" after every allocation and free)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.remove(path)
    events = [e for e in events if e.get("Device Type", 0) == 0]
    if not events:
        return 0
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - start


def measured_peak(fn) -> tuple[object, int]:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return out, _peak_of(prof)


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    handle = load(tiny_models["llama"], device="cpu")
    pairs = make_pairs(tmp_path_factory.mktemp("mem"), tiny_models["llama"], n=3)
    return handle, pairs


def _opts(budget, positions="-1,-3,-8", directions=("denoise",)):
    return PatchOptions(sites=SITES, positions=positions, directions=directions, filter="none", batch_size=3,
                        template="short", memory_budget=budget)


@pytest.fixture()
def probe(monkeypatch):
    """Record every fast-path forward's info, with its measured peak when state["measure"] is set."""
    records: list[dict] = []
    state = {"measure": False}

    @contextlib.contextmanager
    def fn(info):
        if not state["measure"]:
            yield
            records.append(dict(info))
            return
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield
        records.append(dict(info, measured=_peak_of(prof)))

    monkeypatch.setattr(patching, "FORWARD_PROBE", fn)
    return records, state


def test_every_forward_fits_the_budget_and_the_estimate_bounds_what_it_allocates(setup, probe):
    handle, pairs = setup
    records, state = probe
    state["measure"] = True
    run_patching(handle, pairs, _opts(BUDGET))
    patch = [r for r in records if r["kind"] == "patch"]
    n_rows = sum(r["rows"] for r in patch)
    assert n_rows == 3 * len(patching.sweep_configs(handle, SITES)) * 3  # pairs x configs x positions
    assert len(patch) > 3 and max(r["rows"] for r in patch) > 1  # chunked, and not one row at a time
    for r in patch:
        assert r["rows"] == 1 or r["resident_bytes"] + r["est_bytes"] <= BUDGET, r
    for r in records:  # the estimate is an upper bound of what a forward allocates, and not a loose one
        assert r["measured"] <= r["est_bytes"], r
        if r["kind"] == "patch":
            assert r["measured"] >= r["est_bytes"] / 3, r
            assert r["resident_bytes"] + r["measured"] <= BUDGET or r["rows"] == 1, r


def test_the_sweeps_measured_peak_stays_under_the_budget(setup):
    handle, pairs = setup
    _, small = measured_peak(lambda: run_patching(handle, pairs, _opts(BUDGET)))
    _, default = measured_peak(lambda: run_patching(handle, pairs, _opts(1 << 30)))
    assert small <= BUDGET < default, (small, default)  # the budget, not the model's size, keeps it under


def test_results_do_not_depend_on_the_budget(setup, probe):
    handle, pairs = setup
    records, _ = probe
    tables = {}
    for budget in (1, 1 << 40):
        records.clear()
        tables[budget] = run_patching(handle, pairs, _opts(budget, positions="-1,-2,-4,-7,-11",
                                                           directions=("denoise", "noise")))
        patch = [r for r in records if r["kind"] == "patch"]
        source = [r for r in records if r["kind"] == "source"]
        if budget == 1:  # one row per forward; source activations captured one position at a time
            assert max(r["rows"] for r in patch) == 1
            positions = len(tables[1].table.position.unique())
            assert len(source) >= 2 * positions
        else:
            assert len(source) == 2  # one batch per direction, every position captured at once
    a, b = tables[1].table, tables[1 << 40].table
    m = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b) > 0
    for metric in ("logit_diff", "p_target", "exact_match"):  # measured: 9e-8, 7e-10, 0
        mm = m[m.metric == metric]
        assert (mm.value_a - mm.value_b).abs().max() < 1e-6, metric
    # (1 row vs 66 rows per forward changes only float rounding; the normalised effect divides
    # logit differences by a source - base difference that is ~0 for some pairs on random weights)
