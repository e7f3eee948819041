"""Running counter or parallel aggregation (report/mechanism.py, docs/MECHANISM.md): the rule at its
thresholds on hand-made numbers, and the real stages (probes at the items, patching at the named
positions, attention) on planted tiny Llamas whose mechanism is known because it is written by hand:

  running   block 0 keeps the count so far at every token (a head that attends to BOS and the fruit
            words; two linear counters of matches and list words); block 1's head at the answer
            attends to the last list word (the highest list-word counter) and copies its count
  parallel  block 1's head at the answer attends to BOS and the fruit words and writes the count;
            nothing happens at the list words (the planted model of tests/test_lens_dla.py, with
            the rest of the model silenced so that no running count leaks into the items)
  decoy     parallel, plus a linear counter at the items that nothing reads: the probes find a
            running count that patching shows unused, so the rule must say "inconclusive"
  random    random weights: does not count, "inconclusive"

Embeddings are one-hot features with a ballast dimension that gives every token an RMS of exactly
1, so the first blocks' norms leave the features as they are. RoPE's base is 1e30: every rotary
frequency but the first (head dims 0 and 4, left unused) is ~0, so attention scores do not depend on
position. The count is read out as logit_d = G (2 d X_A - (d^2 - 1) X_B) with X_A / X_B = count,
whose argmax over d is the count whatever positive factor the norms put in front.
"""

import ast
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from countlens.data.generate import generate_dataset
from countlens.data.lexicon import load_lexicon
from countlens.data.pairs import build_pairs
from countlens.interp.acts import read_rows
from countlens.interp.attention import AttentionOptions, run_attention
from countlens.interp.patching import PatchOptions, load_pairs, run_patching
from countlens.interp.probes import run_probes
from countlens.io import write_json
from countlens.models.encoding import encode_prompt
from countlens.models.handle import load
from countlens.models.organism.tokenizer import build_tokenizer
from countlens.report import mechanism as mech
from countlens.report.mechanism import (AttentionEvidence, Evidence, PatchEvidence, ProbeEvidence, decide,
                                        evidence_from, middle_items, patch_evidence, probe_evidence)

K = 5                                            # counts 0..5
BAL, A_, B_, Q_, W_, NQ = 0, 1, 2, 3, 4, 5       # ballast, fruit, BOS, "(", list word, not "("
CA, CB, CL, PW, XA, XB = 8, 9, 10, 11, 12, 13    # ratio counter, linear counters, the answer's readout
HD = 8                                           # head_dim; 4 heads x 8 = hidden 32
N_EXAMPLES, N_PAIRS, N_ATTN = 120, 24, 60


# ---------------------------------------------------------------------------------- planted models

def _base(n_layers: int = 3):
    """A silent Llama: one-hot embeddings with ballast, every attention and MLP zero, digit readout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=HD, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e30}, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    vocab = tok.get_vocab()
    lex = load_lexicon("clean-v1")
    fruits = [vocab[w] for w in lex.categories["fruit"]]
    words = sorted({vocab[w] for ws in lex.categories.values() for w in ws} | {vocab[w] for w in lex.noise})
    with torch.no_grad():
        E = model.model.embed_tokens.weight
        E.zero_()
        E[:, NQ] = 1.0
        E[vocab["("], NQ] = 0.0
        E[vocab["("], Q_] = 1.0
        E[words, W_] = 1.0
        E[fruits, A_] = 1.0
        E[tok.bos_token_id, B_] = 1.0
        E[:, BAL] = torch.sqrt(32.0 - (E[:, 1:] ** 2).sum(1))  # every token: RMS exactly 1
        for blk in model.model.layers:
            for w in (blk.self_attn.q_proj.weight, blk.self_attn.k_proj.weight, blk.self_attn.v_proj.weight,
                      blk.self_attn.o_proj.weight, blk.mlp.down_proj.weight):
                w.zero_()
        U = model.lm_head.weight
        for d in range(K + 1):
            U[vocab[str(d)]] = 0.0
            U[vocab[str(d)], XA] = 10.0 * 2 * d
            U[vocab[str(d)], XB] = -10.0 * (d * d - 1)
    return model, tok


def _scores(attn, head: int, pairs) -> None:
    """(head dim, query feature, key feature, score): query feature . key feature scores `score`
    (the input norm leaves the features at 1; dims 1-3 are rotation-free)."""
    for dim, qf, kf, score in pairs:
        attn.q_proj.weight[HD * head + dim, qf] += score * math.sqrt(HD)
        attn.k_proj.weight[HD * head + dim, kf] += 1.0


def _write(attn, head: int, reads: dict[int, int], writes: dict[int, float]) -> None:
    """Value dim j reads residual feature reads[j]; the output projection writes value dim j into
    residual dim out with gain writes[(j, out)]."""
    for j, feat in reads.items():
        attn.v_proj.weight[HD * head + j, feat] = 1.0
    for (j, out), gain in writes.items():
        attn.o_proj.weight[out, HD * head + j] = gain


def _linear_counter(attn, head: int, feat: int, out: int) -> None:
    """out = 0.1 x (tokens so far with `feat`) at every token but "(": a BOS sink of e^12 makes
    each other token's weight e^-12, and the output projection multiplies by e^12."""
    _scores(attn, head, [(1, NQ, B_, 12.0), (2, Q_, Q_, 40.0)])   # "(" looks at itself only
    _write(attn, head, {0: feat}, {(0, out): 0.1 * math.exp(12.0)})


def _save(model, tok, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (Path(path) / "countlens.json").write_text(json.dumps({"template": "short"}))
    return str(path)


def running_counter_model(path: Path) -> str:
    model, tok = _base()
    with torch.no_grad():
        a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        # block 0, head 0: every token but "(" attends to BOS and the fruit words so far with the same score,
        # and writes CA = c / (1 + c), CB = 1 / (1 + c): the count so far, visible in its attention
        _scores(a0, 0, [(1, NQ, A_, 10.0), (1, NQ, B_, 10.0), (2, Q_, Q_, 40.0)])
        _write(a0, 0, {0: A_, 1: B_}, {(0, CA): 1.0, (1, CB): 1.0})
        _linear_counter(a0, 1, W_, PW)   # list words so far: the position of the last list word is the highest
        _linear_counter(a0, 2, A_, CL)   # matches so far, linearly
        # block 1, head 0 at "(": the list word with the highest PW (the last one) scores >= 30 above any
        # other token; elsewhere the head sits on BOS. It copies the last word's CA, CB to the readout.
        _scores(a1, 0, [(1, Q_, PW, 300.0), (2, Q_, W_, 30.0), (3, NQ, B_, 40.0)])
        _write(a1, 0, {0: CA, 1: CB}, {(0, XA): 1.0, (1, XB): 1.0})
    return _save(model, tok, path)


def parallel_model(path: Path, decoy: bool = False) -> str:
    model, tok = _base()
    with torch.no_grad():
        a1 = model.model.layers[1].self_attn
        # block 1, head 2 at "(": BOS and every fruit word score 10, the rest 0, so X_A / X_B = count;
        # any other token puts its attention on BOS (score 40) and learns nothing about the list
        _scores(a1, 2, [(1, Q_, A_, 10.0), (1, Q_, B_, 10.0), (2, NQ, B_, 40.0)])
        _write(a1, 2, {0: A_, 1: B_}, {(0, XA): 1.0, (1, XB): 1.0})
        if decoy:  # a running count at the items that nothing downstream reads
            _linear_counter(model.model.layers[0].self_attn, 2, A_, CL)
    return _save(model, tok, path)


def random_model(path: Path) -> str:
    from transformers import LlamaForCausalLM

    model, tok = _base()
    torch.manual_seed(1)
    return _save(LlamaForCausalLM(model.config).eval(), tok, path)


# ------------------------------------------------------------------------------------------ stages

def run_study(handle, data: Path, pairs: Path, out: Path) -> Path:
    """probes (last + items), patching (resid, named positions) and attention into the study layout."""
    run_probes(model=handle, data=data, out=out / "probes", positions=["last", "items"],
               controls=("majority", "control"), n_boot=200, figures=False, progress=False, n_jobs=1)
    res = run_patching(handle, load_pairs(pairs), PatchOptions(sites=("resid",), positions="named", n_boot=200))
    (out / "patch").mkdir(parents=True)
    res.table.to_parquet(out / "patch" / "table.parquet", index=False)
    write_json(out / "patch" / "summary.json", res.summary)
    rows = read_rows(data, N_ATTN, native=handle.native_template)
    run_attention(handle, rows, AttentionOptions(n_boot=200, value_weighted=False)).save(out / "analyses" / "attention")
    return out


@torch.no_grad()
def accuracy(handle, data: Path) -> float:
    vocab = handle.tokenizer.get_vocab()
    hits = []
    for r in read_rows(data, native=handle.native_template):
        enc = encode_prompt(handle, r.template, r.category, r.words)
        logits = handle.model(torch.tensor([enc.ids])).logits[0, enc.answer]
        hits.append(int(logits.argmax()) == vocab[str(r.answer)])
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("mechanism")
    data, pairs = root / "data" / "data.jsonl", root / "pairs" / "pairs.jsonl"
    data.parent.mkdir()
    pairs.parent.mkdir()
    generate_dataset(data, N_EXAMPLES, seed=0, template="short", categories=["fruit"])
    build_pairs(data, build_tokenizer(), N_PAIRS, pairs, template="short")
    out = {"data": data, "pairs": pairs, "handles": {}, "seconds": {}}
    for name, build in (("running", running_counter_model), ("parallel", parallel_model),
                        ("decoy", lambda p: parallel_model(p, decoy=True)), ("random", random_model)):
        t0 = time.time()
        handle = load(build(root / f"model-{name}"), device="cpu")
        out["handles"][name] = handle
        out[name] = run_study(handle, data, pairs, root / f"study-{name}")
        out["seconds"][name] = time.time() - t0
    return out


# ------------------------------------------------------------------------------ the planted models

def test_the_planted_models_count_and_the_random_one_does_not(studies):
    for name in ("running", "parallel", "decoy"):
        assert accuracy(studies["handles"][name], studies["data"]) == 1.0, name
    assert accuracy(studies["handles"]["random"], studies["data"]) < 0.5


def test_the_running_counter_is_called_a_running_counter(studies):
    ev = evidence_from(studies["running"])
    v = decide(ev)
    assert (v.hypothesis, v.strength) == ("running counter", "strong"), v.summary
    assert [e.vote for e in v.evidence] == ["running counter"] * 3
    p, c, a = ev.probes, ev.patch, ev.attention
    assert p.items == [1, 2, 3] and p.layer == 0 and p.lift >= 0.3 and p.lift_ci_low >= 0.25
    # the count is at the last word after block 0 and at the answer from block 1; the changed word only
    # matters before block 0 reads it
    prof = {e["layer"]: e for e in c.per_layer}
    assert c.mode == "named" and c.n_pairs >= 20
    assert prof[0]["last_item"] == pytest.approx(1, abs=1e-3) and prof[1]["last_item"] == pytest.approx(0, abs=1e-3)
    assert prof["emb"]["changed"] == pytest.approx(1, abs=1e-3) and prof[0]["changed"] == pytest.approx(0, abs=1e-3)
    assert prof[0]["answer"] == pytest.approx(0, abs=1e-3) and prof[1]["answer"] == pytest.approx(1, abs=1e-3)
    assert c.ratio == pytest.approx(1, abs=1e-3)
    assert a.items_head == (0, 0) and a.items_diff >= 0.25 and a.answer_ci_low <= 0
    assert "patching: PATCH_RATIO_RUNNING" in v.thresholds_met and "probes: PROBE_LIFT_RUNNING" in v.thresholds_met


def test_parallel_aggregation_is_called_parallel_aggregation(studies):
    ev = evidence_from(studies["parallel"])
    v = decide(ev)
    assert (v.hypothesis, v.strength) == ("parallel aggregation", "strong"), v.summary
    assert [e.vote for e in v.evidence] == ["parallel aggregation"] * 3
    prof = {e["layer"]: e for e in ev.patch.per_layer}
    assert max(abs(e["last_item"]) for e in ev.patch.per_layer) < 1e-3
    assert prof[0]["changed"] == pytest.approx(1, abs=1e-3) and prof[1]["changed"] == pytest.approx(0, abs=1e-3)
    assert prof[1]["answer"] == pytest.approx(1, abs=1e-3)
    assert abs(ev.probes.lift) <= 0.05
    assert ev.attention.answer_head == (1, 2) and ev.attention.answer_diff >= 0.25


def test_an_unused_running_count_makes_the_verdict_inconclusive(studies):
    v = decide(evidence_from(studies["decoy"]))
    votes = {e.key: e.vote for e in v.evidence}
    assert votes == {"patching": "parallel aggregation", "probes": "running counter",
                     "attention": "parallel aggregation"}
    assert (v.hypothesis, v.strength) == ("inconclusive", "weak") and "conflicts" in v.summary


def test_a_random_model_is_inconclusive(studies):
    ev = evidence_from(studies["random"])
    v = decide(ev)
    assert v.hypothesis == "inconclusive" and ev.patch.filter_fallback
    assert "does not count" in v.summary
    assert v.evidence[0].vote == "neutral"


def test_positions_all_gives_the_named_numbers(studies):
    """The study's default for small models patches every position: the last word and the changed word
    are found from the example's offsets and the embedding-layer patch."""
    for name in ("running", "parallel"):
        res = run_patching(studies["handles"][name], load_pairs(studies["pairs"]),
                           PatchOptions(sites=("resid",), positions="all", n_boot=100))
        a = patch_evidence(res.summary, res.table)
        b = evidence_from(studies[name]).patch
        assert a.mode == "all" and a.n_pairs == b.n_pairs
        for key in ("ratio", "last_item", "answer", "changed"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-4), (name, key)
        assert [e["layer"] for e in a.per_layer] == [e["layer"] for e in b.per_layer]
        for ea, eb in zip(a.per_layer, b.per_layer):
            for role in ("changed", "last_item", "answer"):
                assert ea[role] == pytest.approx(eb[role], abs=1e-4), (name, ea["layer"], role)
        # every list word after the changed one: the running model's counters all carry the count
        assert a.later_items == pytest.approx(1.0 if name == "running" else 0.0, abs=1e-3)


def test_evidence_from_takes_files_and_misses_nothing_silently(studies, tmp_path):
    s = Path(studies["running"])
    whole = evidence_from(s)
    explicit = evidence_from(probes=s / "probes" / "summary.json", patch=s / "patch" / "table.parquet",
                             attention=s / "analyses" / "attention")
    assert explicit.model_dump(exclude={"probes": {"source"}, "patch": {"source"}, "attention": {"source"}}) == \
        whole.model_dump(exclude={"probes": {"source"}, "patch": {"source"}, "attention": {"source"}})
    # `countlens analyse` writes OUT/attention; a study without attention has none; nothing at all is no error
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "attention").symlink_to(s / "analyses" / "attention", target_is_directory=True)
    (tmp_path / "a" / "patch").symlink_to(s / "patch", target_is_directory=True)
    ev = evidence_from(tmp_path / "a")
    assert ev.probes is None and ev.patch is not None
    assert ev.attention.model_dump(exclude={"source"}) == whole.attention.model_dump(exclude={"source"})
    v = decide(evidence_from(tmp_path / "nothing"))
    assert v.hypothesis == "inconclusive" and [e.vote for e in v.evidence] == ["missing"] * 3
    # probes' summary without probes.parquet: Wilson intervals from accuracy and n
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "summary.json").write_text((s / "probes" / "summary.json").read_text())
    p = evidence_from(probes=tmp_path / "p").probes
    assert p.lift == pytest.approx(whole.probes.lift)
    assert p.lift_ci_low == pytest.approx(whole.probes.lift_ci_low, abs=0.02)
    # an unreadable file is a note, not an exception
    (tmp_path / "bad" / "probes").mkdir(parents=True)
    (tmp_path / "bad" / "probes" / "summary.json").write_text("{not json")
    bad = evidence_from(tmp_path / "bad")
    assert bad.probes is None and any(n.startswith("probes: could not be read") for n in bad.notes)
    v = decide(bad)
    assert "could not be read" in v.evidence[1].reading and v.notes == bad.notes


# ---------------------------------------------------------------------------- the rule, by hand

def _probe(lift: float, low: float, best: float | None = None) -> ProbeEvidence:
    return ProbeEvidence(items=[1, 2], layer=3, accuracy=0.5 + lift, baseline=0.5, lift=lift, lift_ci_low=low,
                         lift_ci_high=lift + 0.05, per_layer=[{"layer": 3, "lift": lift if best is None else best}],
                         per_item=[])


def _patch(ratio: float, low: float, high: float, answer: float = 1.0, changed: float = 1.0, n: int = 20,
           fallback: str | None = None) -> PatchEvidence:
    return PatchEvidence(mode="named", direction="denoise", n_pairs=n, last_item=ratio * answer,
                         last_item_ci_low=low * answer, last_item_ci_high=high * answer, last_item_layer=5,
                         answer=answer, answer_layer=9, changed=changed, changed_layer=1, ratio=ratio,
                         ratio_ci_low=low, ratio_ci_high=high, filter_fallback=fallback)


def _attn(answer: tuple[float, float], items: tuple[float, float] = (0.0, -0.01)) -> AttentionEvidence:
    return AttentionEvidence(answer_head=(4, 1), answer_diff=answer[0], answer_ci_low=answer[1],
                             answer_ci_high=answer[0] + 0.05, items_head=(2, 3), items_diff=items[0],
                             items_ci_low=items[1], items_ci_high=items[0] + 0.05)


def _votes(ev: Evidence) -> dict[str, str]:
    return {e.key: e.vote for e in decide(ev).evidence}


def test_each_vote_flips_exactly_at_its_threshold():
    T = mech
    patch = lambda *a, **k: _votes(Evidence(patch=_patch(*a, **k)))["patching"]  # noqa: E731
    assert patch(T.PATCH_RATIO_RUNNING, T.PATCH_RATIO_RUNNING_LOW, 1.0) == "running counter"
    assert patch(T.PATCH_RATIO_RUNNING - 1e-9, 0.4, 1.0) == "neutral"
    assert patch(0.8, T.PATCH_RATIO_RUNNING_LOW - 1e-9, 1.0) == "neutral"
    assert patch(T.PATCH_RATIO_ABSENT, 0.0, T.PATCH_RATIO_ABSENT_HIGH) == "parallel aggregation"
    assert patch(T.PATCH_RATIO_ABSENT + 1e-9, 0.0, 0.2) == "neutral"
    assert patch(0.0, 0.0, T.PATCH_RATIO_ABSENT_HIGH + 1e-9) == "neutral"
    assert patch(0.0, 0.0, 0.1, changed=T.PATCH_CHANGED_MIN - 1e-9) == "neutral"    # the pairs carry nothing
    assert patch(1.0, 0.9, 1.0, answer=T.PATCH_ANSWER_MIN - 1e-9) == "neutral"
    assert patch(1.0, 0.9, 1.0, n=T.PATCH_MIN_PAIRS - 1) == "neutral"
    assert patch(1.0, 0.9, 1.0, n=T.PATCH_MIN_PAIRS) == "running counter"
    probe = lambda *a: _votes(Evidence(probes=_probe(*a)))["probes"]  # noqa: E731
    assert probe(T.PROBE_LIFT_RUNNING, T.PROBE_LIFT_RUNNING_LOW) == "running counter"
    assert probe(T.PROBE_LIFT_RUNNING - 1e-9, 0.1) == "neutral"
    assert probe(0.5, T.PROBE_LIFT_RUNNING_LOW - 1e-9) == "neutral"
    assert probe(T.PROBE_LIFT_ABSENT, -0.1) == "parallel aggregation"
    assert probe(T.PROBE_LIFT_ABSENT + 1e-9, -0.1) == "neutral"
    attn = lambda *a: _votes(Evidence(attention=_attn(*a)))["attention"]  # noqa: E731
    assert attn((T.ATTN_DIFF, T.ATTN_DIFF_LOW)) == "parallel aggregation"
    assert attn((T.ATTN_DIFF - 1e-9, 0.08)) == "neutral"
    assert attn((0.3, T.ATTN_DIFF_LOW - 1e-9)) == "neutral"
    assert attn((0.3, 0.0), (T.ATTN_DIFF, T.ATTN_DIFF_LOW)) == "running counter"      # answer interval reaches 0
    assert attn((T.ATTN_ABSENT - 1e-9, 0.01), (0.3, 0.2)) == "running counter"
    assert attn((T.ATTN_ABSENT, 0.01), (0.3, 0.2)) == "neutral"                         # neither side clear
    assert attn((0.0, -0.1), (T.ATTN_DIFF - 1e-9, 0.2)) == "neutral"


def test_strength_counts_the_pieces_that_agree_with_patching():
    R, P = (_patch(0.9, 0.7, 1.0), _probe(0.4, 0.3), _attn((0.0, -0.1), (0.3, 0.2))), \
        (_patch(0.0, 0.0, 0.1), _probe(0.0, -0.1), _attn((0.3, 0.2)))
    neutral_probe, neutral_attn = _probe(0.1, 0.0), _attn((0.0, -0.1))
    for (c, p, a), h in ((R, "running counter"), (P, "parallel aggregation")):
        assert (decide(Evidence(patch=c, probes=p, attention=a)).hypothesis,
                decide(Evidence(patch=c, probes=p, attention=a)).strength) == (h, "strong")
        assert decide(Evidence(patch=c, probes=p, attention=neutral_attn)).strength == "moderate"
        assert decide(Evidence(patch=c, attention=a)).strength == "moderate"            # probes missing
        assert (decide(Evidence(patch=c, probes=neutral_probe)).hypothesis,
                decide(Evidence(patch=c, probes=neutral_probe)).strength) == (h, "weak")
        # without a causal vote: inconclusive, leaning to what the rest says
        for patch in (None, _patch(0.3, 0.1, 0.5)):
            v = decide(Evidence(patch=patch, probes=p, attention=a))
            assert (v.hypothesis, v.strength, v.lean) == ("inconclusive", "weak", h)
    # any disagreement, and a model that does not count
    assert decide(Evidence(patch=R[0], probes=P[1], attention=R[2])).hypothesis == "inconclusive"
    assert decide(Evidence(patch=P[0], probes=P[1], attention=R[2])).hypothesis == "inconclusive"
    v = decide(Evidence(patch=_patch(0.9, 0.7, 1.0, fallback="only 2 of 24 pairs"), probes=R[1], attention=R[2]))
    assert v.hypothesis == "inconclusive" and "does not count" in v.summary
    v = decide(Evidence(patch=R[0], probes=R[1], attention=R[2]))
    assert all(e.reading.endswith(".") and e.value for e in v.evidence)
    assert v.model_dump(mode="json")["thresholds"]["PATCH_RATIO_RUNNING"] == 0.5


# ---------------------------------------------------------------------------- the pure readers

def test_middle_items_are_the_words_that_never_end_a_list():
    assert middle_items([0, 1, 2, 3, 4, 5], [100, 100, 100, 100, 100, 80]) == ([1, 2, 3], None)
    used, note = middle_items([0, 1, 2, 3], [100, 90, 80, 70])
    assert used == [1, 2] and note


def test_patch_evidence_leaves_out_uninformative_pairs_and_a_changed_last_word():
    rows = []

    def add(pair, name, layer, norm, ld=0.0):
        for metric, v in (("normalized", norm), ("logit_diff", ld)):
            rows.append({"pair": pair, "n_low": 1, "direction": "denoise", "site": "resid", "layer": layer,
                         "position": -1 if name == "answer" else -3, "position_name": name, "head": -1,
                         "metric": metric, "value": v})

    for i in range(10):
        good, last = f"p{i}", 0.8 if i % 2 else 0.6
        for layer, (ch, li, an) in {"emb": (1, 0, 0), "0": (0.2, last, 0), "1": (0, 0, 1)}.items():
            add(good, "changed", layer, ch)
            add(good, "last_item", layer, li)
            add(good, "answer", layer, an, ld={"emb": -2.0, "1": 2.0}.get(layer, 0.0))
    for layer in ("emb", "0", "1"):      # LD gap 0.1: uninformative, its huge ratio must not count
        add("flat", "changed", layer, 50.0)
        add("flat", "last_item", layer, 50.0)
        add("flat", "answer", layer, 1.0 if layer == "1" else 0.0, ld=0.1 if layer == "1" else 0.0)
        add("lastword", "last_item", layer, 1.0)       # changed word == last word: no "changed" row
        add("lastword", "answer", layer, float(layer == "1"), ld=3.0 if layer == "1" else 0.0)
    ev = patch_evidence({"direction": "denoise", "kept_pairs": 12}, pd.DataFrame(rows))
    assert ev.n_pairs == 10 and ev.last_item == pytest.approx(0.7) and ev.last_item_layer == 0
    assert ev.answer == pytest.approx(1.0) and ev.ratio == pytest.approx(0.7) and ev.changed_layer == "emb"
    assert ev.last_item_ci_low < 0.7 < ev.last_item_ci_high


def test_probe_evidence_uses_the_best_layer_over_the_middle_items():
    rc = {"site": "resid", "layers": ["emb", 0, 1], "items": [0, 1, 2, 3], "n": [100, 100, 100, 100],
          "accuracy": [[1.0, 0.5, 0.4, 0.3], [1.0, 0.6, 0.5, 0.3], [1.0, 0.9, 0.8, 0.9]],
          "control_accuracy": [[0.6, 0.5, 0.45, 0.3], [0.6, 0.55, 0.5, 0.3], [0.6, 0.55, 0.5, 0.3]],
          "majority": [0.5, 0.3, 0.3, 0.3]}
    p = probe_evidence({"running_count": rc, "n_examples": 100})
    assert p.items == [1, 2] and p.layer == 1
    assert p.baseline == pytest.approx((0.55 + 0.5) / 2) and p.lift == pytest.approx(0.85 - 0.525)
    assert p.lift_ci_low < p.lift < p.lift_ci_high
    assert probe_evidence({"running_count": None}) is None


def test_the_report_module_imports_no_engine():
    tree = ast.parse(Path(mech.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith(("countlens.interp", "countlens.models", "countlens.bench", "countlens.backends",
                                 "torch")) for m in mods)
