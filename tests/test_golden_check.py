"""The before/after check itself: float tolerance everywhere, a few flipped examples on probe decisions."""

import copy

from golden_check import differences, probe_atol

PROBES = {"n_examples": 160, "per_layer": [{"layer": "3", "accuracy": 0.7, "ci_low": 0.62, "r2": 0.5,
                                            "selectivity": 0.4}],
          "running_count": {"n": [160, 26], "accuracy": [[0.9, 0.5]]}}


def _changed(path: list, delta: float) -> list[str]:
    new = copy.deepcopy(PROBES)
    *parents, last = path
    node = new
    for k in parents:
        node = node[k]
    node[last] = round(node[last] + delta, 4)
    return differences(PROBES, new, atol=probe_atol(PROBES))


def test_two_flipped_examples_pass_and_three_fail():
    assert _changed(["per_layer", 0, "accuracy"], 2 / 160) == []
    assert _changed(["per_layer", 0, "accuracy"], 3 / 160) == [".per_layer[0].accuracy: 0.7 -> 0.7188"]
    assert _changed(["per_layer", 0, "ci_low"], -2 / 160) == []
    assert _changed(["per_layer", 0, "selectivity"], 4 / 160) == []       # accuracy and control each move
    assert _changed(["per_layer", 0, "selectivity"], 6 / 160) != []


def test_a_running_count_cell_counts_its_own_examples():
    assert _changed(["running_count", "accuracy", 0, 1], 2 / 26) == []    # 26 lists have that many words
    assert _changed(["running_count", "accuracy", 0, 1], 3 / 26) != []
    assert _changed(["running_count", "accuracy", 0, 0], 3 / 160) != []


def test_continuous_numbers_keep_the_float_tolerance():
    assert _changed(["per_layer", 0, "r2"], 0.001) == []
    assert _changed(["per_layer", 0, "r2"], 0.01) == [".per_layer[0].r2: 0.5 -> 0.51"]
    assert differences({"a": 1.0}, {"a": 1.01}) == [".a: 1.0 -> 1.01"]   # other stages: no flips allowed
    assert differences({"a": 1.0}, {}) == [".a: missing"]
