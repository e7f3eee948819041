"""Every architecture through the same generic engine: Gemma 2, Gemma 3 (text), Mistral, Phi-3, GPT-NeoX.

Tiny random-weight models (tests/conftest.py::_tiny_config): Gemma 2 with sliding window 6 on
alternating layers, head_dim != hidden / heads, soft-capping and the sqrt(d) embedding scale;
Gemma 3 with layer_types sliding / full / sliding, window 5; Mistral (window 7) and Phi-3
(window 8, fused qkv / gate_up) sliding on every layer; GPT-NeoX with `attention.dense` and a
parallel residual. The prompts are ~20 tokens, so every window cuts attention.
"""

import math

import pytest
import torch

from conftest import TINY_ARCHS
from countlens.models import kvcache
from countlens.interp.patching import PatchOptions, run_patching
from countlens.models.hooks import capture
from countlens.sites import Site
from countlens.models.handle import load
from test_patching import KEY, make_pairs

SLIDING = ("gemma2", "gemma3", "mistral", "phi3")


@pytest.fixture(scope="module")
def arch_setup(tiny_arch_models, tmp_path_factory):
    out = {}
    for arch, path in tiny_arch_models.items():
        out[arch] = (load(path, device="cpu"), make_pairs(tmp_path_factory.mktemp(arch), path, n=3))
    return out


def _compare(handle, pairs, positions, sites=("resid", "attn", "mlp", "head"), **kw):
    tables = {m: run_patching(handle, pairs, PatchOptions(sites=sites, positions=positions,
                                                          directions=("denoise", "noise"), method=m,
                                                          filter="none", template="short", **kw)).table
              for m in ("fast", "reference")}
    a, b = tables["fast"], tables["reference"]
    m = a.merge(b, on=KEY, suffixes=("_f", "_r"))
    assert len(m) == len(a) == len(b) > 0
    assert set(m.site) == set(sites)
    for metric in ("logit_diff", "p_target", "exact_match"):
        d = (m[m.metric == metric].value_f - m[m.metric == metric].value_r).abs().max()
        assert d < 1e-4, (positions, metric, d)
    return a


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_fast_equals_reference_on_every_architecture(arch_setup, arch):
    """1e-4 in float32 for resid / attn / mlp / head, positions last / all / offsets, denoise + noise."""
    handle, pairs = arch_setup[arch]
    _compare(handle, pairs, "last", batch_size=2)
    _compare(handle, pairs, "-1,-2,-6", batch_size=3)
    # all positions on two pairs (one batch); the reference is a full forward per (position, config)
    _compare(handle, pairs[:2], "all", batch_size=2)


@pytest.mark.parametrize("arch", SLIDING)
def test_the_sliding_window_cuts_attention_on_these_prompts(arch_setup, arch):
    """Else the fast == reference test above would not exercise sliding-window caches."""
    handle, pairs = arch_setup[arch]
    cfg = handle.model.config
    assert any(kvcache.sliding_windows(cfg))
    ids = torch.tensor([handle.encode_text(handle.format(pairs[0]["low"]["prompt"]) + "(")])
    assert ids.shape[1] > 2 * max(w for w in kvcache.sliding_windows(cfg) if w)
    wide = type(cfg).from_dict({**cfg.to_dict(), "sliding_window": 4096})
    other = type(handle.model)(wide).eval()
    other.load_state_dict(handle.model.state_dict())
    with torch.no_grad():
        a, b = handle.model(ids).logits[0, -1], other(ids).logits[0, -1]
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_rebuilt_prefix_cache_is_the_models_own_cache(arch_setup, arch):
    """build_cache(full KV, p) == the cache the model itself holds after a prefill of p positions:
    same layer types, kept keys/values, seen length, mask sizes; the continuation's logits agree."""
    handle, pairs = arch_setup[arch]
    model, cfg = handle.model, handle.model.config
    ids = torch.tensor([handle.encode_text(handle.format(p["low"]["prompt"]) + "(") for p in pairs[:1]] * 2)
    W = ids.shape[1]
    with torch.no_grad():
        kv = kvcache.kv_tensors(kvcache.output_cache(kvcache.forward(model, input_ids=ids)))
        for p in (3, W - 7, W - 1):
            own = kvcache.output_cache(model(input_ids=ids[:, :p], use_cache=True))  # DynamicCache(config=...)
            if arch in SLIDING and p > 8:
                with pytest.raises(ValueError, match="full_cache"):
                    kvcache.kv_tensors(own)  # its sliding layers dropped positions
            rebuilt = kvcache.build_cache(kv, cfg, p)
            assert len(own.layers) == len(rebuilt.layers)
            for lo, lr in zip(own.layers, rebuilt.layers):
                assert type(lo) is type(lr)
                assert lo.keys.shape == lr.keys.shape  # (a prefill of p computes them at another width)
                assert torch.allclose(lo.keys, lr.keys, atol=1e-6) and torch.allclose(lo.values, lr.values, atol=1e-6)
                assert lo.get_seq_length() == lr.get_seq_length() == p
                assert lo.get_mask_sizes(W - p) == lr.get_mask_sizes(W - p)
            a = kvcache.forward(model, cache=own, input_ids=ids[:, p:]).logits[:, -1]
            b = kvcache.forward(model, cache=rebuilt, input_ids=ids[:, p:]).logits[:, -1]
            full = model(input_ids=ids, use_cache=False).logits[:, -1]
            assert torch.allclose(a, b, atol=1e-5) and torch.allclose(b, full, atol=1e-4)
        # rows: a gather (different sequences) and a shared stride-0 view (one sequence) agree
        rows = kvcache.build_cache(kv, cfg, W - 2, torch.tensor([1, 0, 1]))
        same = kvcache.build_cache(kv, cfg, W - 2, torch.tensor([1, 1, 1]))
        for lr, ls, (k, _) in zip(rows.layers, same.layers, kv):
            assert torch.equal(lr.keys[[0, 2]], ls.keys[:2]) and torch.equal(ls.keys[0], ls.keys[2])
            assert ls.keys.shape[0] == 3 and ls.keys.stride(0) != 0  # update's cat materialised it


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layer_L_is_the_output_of_block_L_on_every_architecture(arch_setup, arch):
    """resid "emb" is the input of block 0 (with Gemma's sqrt(d) scale), layer L is HF's hidden_states[L+1]
    but the last (HF's is after the final norm); patching the last block at the last position gives
    the source run's logits (normalised effect 1), patching "emb" there gives the base run's (0)."""
    handle, pairs = arch_setup[arch]
    model = handle.model
    ids = torch.tensor([[handle.tokenizer.bos_token_id] + list(range(10, 30))])
    sites = [Site("resid", "emb")] + [Site("resid", i) for i in range(handle.n_layers)]
    with torch.no_grad(), capture(handle, sites) as st:
        hs = model(ids, output_hidden_states=True).hidden_states
    emb = st[Site("resid", "emb")]
    assert torch.equal(emb, hs[0])
    E = model.get_input_embeddings()
    raw = torch.nn.functional.embedding(ids, E.weight)
    if hasattr(E, "embed_scale"):  # Gemma: the scale belongs to "emb"
        assert torch.allclose(emb, raw * math.sqrt(model.config.hidden_size), atol=1e-5)
        assert not torch.allclose(emb, raw)
    for i in range(handle.n_layers - 1):
        assert torch.equal(st[Site("resid", i)], hs[i + 1])
        assert not torch.allclose(st[Site("resid", i)], hs[i])
    last = st[Site("resid", handle.n_layers - 1)]
    norm = next(getattr(model.base_model, n) for n in ("norm", "final_layer_norm", "ln_f")
                if hasattr(model.base_model, n))
    assert not torch.allclose(last, hs[-1]) and torch.allclose(norm(last), hs[-1], atol=1e-5)

    table = run_patching(handle, pairs, PatchOptions(sites=("resid",), positions="last", filter="none",
                                                     template="short")).table
    ld = table[table.metric == "logit_diff"].set_index(["pair", "layer"]).value
    norm_eff = table[table.metric == "normalized"].set_index(["pair", "layer"]).value
    last_layer = str(handle.n_layers - 1)
    with torch.no_grad():
        for p in pairs:
            lo_hi = []
            for side in ("low", "high"):
                x = torch.tensor([handle.encode_text(handle.format(p[side]["prompt"]) + "(")])
                lo_hi.append(model(x).logits[0, -1])
            toks = handle.answer_tokens(p["n_high"], "(")
            a, b = toks[p["n_high"]][0], toks[p["n_low"]][0]
            ld_base, ld_src = (float(lg[a] - lg[b]) for lg in lo_hi)
            assert ld[(p["id"], "emb")] == pytest.approx(ld_base, abs=1e-4)
            assert ld[(p["id"], last_layer)] == pytest.approx(ld_src, abs=1e-4)
            if abs(ld_src - ld_base) > 1e-2:
                assert norm_eff[(p["id"], last_layer)] == pytest.approx(1.0, abs=1e-3)
                assert norm_eff[(p["id"], "emb")] == pytest.approx(0.0, abs=1e-3)
