"""Activation collection: positions found per tokenizer, values equal to the model's own hidden
states, and a store that resumes after an interruption to exactly the same bytes."""

import numpy as np
import pytest
import torch

from conftest import QWEN_TOKENIZER, needs_qwen
from countlens.data.generate import generate_dataset
from countlens.errors import InputError
from countlens.interp.acts import collect_activations
from countlens.interp.store import ActStore
from countlens.models.handle import load
from probe_helpers import tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    data = root / "d.jsonl"
    generate_dataset(data, 40, seed=5)
    return load(tiny_model(root / "model"), device="cpu"), data, root


def _check_positions(handle, store: ActStore):
    tok = handle.tokenizer
    ex = store.examples.set_index("example")
    for e, rows in store.index.groupby("example"):
        words, cat = ex.loc[e, "words"], ex.loc[e, "category"]
        tpl = handle.template()
        ids = handle.encode_text(handle.format(tpl.render(cat, list(words))) + tpl.answer_prefix)
        assert len(ids) == ex.loc[e, "n_tokens"]
        for r in rows.itertuples():
            upto, before = tok.decode(ids[:r.token + 1]), tok.decode(ids[:r.token])
            if r.position == "last":
                assert r.token == len(ids) - 1 and upto.endswith("(")
            elif r.position == "prefix":
                assert upto.endswith(cat) and not before.endswith(cat)
            else:  # the word's last token: the word is complete here and not one token earlier
                assert r.word == words[r.item]
                assert upto.endswith(r.word) and not before.endswith(r.word), (r.word, upto[-30:])
                assert r.running_count == sum(ex.loc[e, "match"][:r.item + 1])
        assert rows["final_count"].iloc[0] == ex.loc[e, "answer"]


def test_positions_and_values_match_the_models_hidden_states(tiny):
    handle, data, root = tiny
    s = collect_activations(handle, data, root / "store", positions="last,items,prefix", n=12, batch_size=5,
                            progress=False)
    assert s.complete and s.n_examples == 12 and s.sites == ["resid.emb", "resid.0", "resid.1"]
    store = ActStore.open(root / "store")
    assert set(store.index["position"]) == {"last", "items", "prefix"}
    assert (np.diff(store.index["row"]) == 1).all()
    _check_positions(handle, store)
    # an unpadded forward: hidden_states[0] is "emb", hidden_states[L+1] is block L (before the final norm
    # only for L < last), and the stored float16 rows match them
    for e in (0, 7):
        rows = store.index[store.index["example"] == e]
        ids = torch.tensor([handle.encode_text(handle.format(_prompt(handle, store, e)) + "(")])
        with torch.no_grad():
            hs = handle.model(input_ids=ids, output_hidden_states=True).hidden_states
        for site, h in (("resid.emb", hs[0]), ("resid.0", hs[1])):
            got = store.array(site)[rows["row"].to_numpy()].astype(np.float32)
            want = h[0, torch.tensor(rows["token"].tolist())].numpy()
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def _prompt(handle, store, e):
    ex = store.examples.loc[e]
    return handle.template().render(ex["category"], list(ex["words"]))


def test_an_interrupted_collection_resumes_to_the_same_bytes(tiny):
    handle, data, root = tiny
    kw = dict(sites="resid,attn", positions="last,items", chunk_size=8, batch_size=4, progress=False)
    first = collect_activations(handle, data, root / "resumed", max_chunks=2, **kw)
    assert not first.complete and first.done_examples == 16
    with pytest.raises(InputError, match="incomplete"):
        ActStore.open(root / "resumed")
    second = collect_activations(handle, data, root / "resumed", **kw)
    assert second.complete and second.resumed_from == 16 and second.done_examples == 40
    third = collect_activations(handle, data, root / "resumed", **kw)  # finished: nothing to do
    assert third.resumed_from == 40
    collect_activations(handle, data, root / "oneshot", **kw)
    a, b = ActStore.open(root / "resumed"), ActStore.open(root / "oneshot")
    assert a.sites == b.sites == ["resid.emb", "resid.0", "resid.1", "attn.0", "attn.1"]
    for site in a.sites:
        assert np.array_equal(a.array(site), b.array(site))
        assert np.abs(a.array(site)).sum() > 0
    assert a.index.equals(b.index)
    with pytest.raises(InputError, match="another run"):
        collect_activations(handle, data, root / "resumed", **{**kw, "sites": "resid"})


@needs_qwen
def test_item_positions_under_the_real_qwen_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    handle = load(tiny_model(tmp_path / "qwen", tok, arch="qwen2", n_layers=1), device="cpu")
    data = tmp_path / "d.jsonl"
    generate_dataset(data, 6, seed=2)
    collect_activations(handle, data, tmp_path / "store", positions="last,items,prefix", sites="resid.0",
                        progress=False)
    store = ActStore.open(tmp_path / "store")
    _check_positions(handle, store)
    # multi-token words exist in this vocabulary: their last token is what we keep
    assert len(tok(" tuba", add_special_tokens=False)["input_ids"]) == 2
