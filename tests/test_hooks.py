"""The one hook layer (models/hooks.py) and the one Site type (sites.py)."""

import re

import pytest
import torch

from conftest import ROOT
from countlens.models import hooks
from countlens.models.handle import load
from countlens.sites import Site, layer_key, parse_layer


def test_site_text_round_trips_and_sorts_in_depth_order():
    for text in ("resid.emb", "resid.0", "attn.3", "mlp.11", "head.2", "head.2.5"):
        assert str(Site.parse(text)) == text
    assert Site.parse("head.2.5") == Site("head", "2", 5) and Site("resid", "3").layer == 3
    assert Site.parse("head.2.5").module_site == Site("head", 2)
    sites = [Site("resid", 10), Site("resid", 2), Site("resid", "emb"), Site("head", 1, 3), Site("head", 1)]
    assert [str(s) for s in sorted(sites, key=Site.sort_key)] == [
        "resid.emb", "resid.2", "resid.10", "head.1", "head.1.3"]
    assert sorted(["3", "emb", "10"], key=layer_key) == ["emb", "3", "10"] and parse_layer("7") == 7
    for bad in ("resid", "nope.3", "attn.emb", "mlp.3.1", "resid.x"):
        with pytest.raises(ValueError):
            Site.parse(bad)


def test_no_module_outside_the_hook_layer_registers_a_hook():
    """Every intervention goes through models/hooks.py (lazy imports and benchmarks included)."""
    pattern = re.compile(r"register_forward(_pre)?_hook|register_full_backward")
    offenders = [str(p.relative_to(ROOT)) for d in ("src", "benchmarks") for p in (ROOT / d).rglob("*.py")
                 if pattern.search(p.read_text()) and p != ROOT / "src/countlens/models/hooks.py"]
    assert offenders == []


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load(tiny_models["llama"], device="cpu")


def _ids(h, B=3, T=9):
    g = torch.Generator().manual_seed(0)
    return torch.randint(10, 60, (B, T), generator=g)


def test_capture_positions_rows_and_heads(llama):
    ids = _ids(llama)
    full, head = Site("resid", 1), Site("head", 2)
    with torch.no_grad(), hooks.capture(llama, [full, head, Site("head", 2, 3)]) as st:
        llama.model(ids)
    x, hx = st[full], st[head]
    assert hx.shape[-2:] == (hooks.n_heads(llama.model), hx.shape[-1]) and torch.equal(st[Site("head", 2, 3)], hx[..., 3, :])
    per_row = torch.tensor([1, 4, 8])
    with torch.no_grad(), hooks.capture(llama, [full], positions=per_row) as st:
        llama.model(ids)
    assert torch.equal(st[full][:, 0], x[torch.arange(3), per_row])
    with torch.no_grad(), hooks.capture(llama, [full], positions=[0, -1]) as st:
        llama.model(ids)
    assert torch.equal(st[full], x[:, [0, 8]])


def test_replace_edits_only_the_named_rows_positions_and_heads(llama):
    ids = _ids(llama)
    site = Site("head", 1)
    with torch.no_grad(), hooks.capture(llama, [site, Site("resid", 2)]) as clean:
        base = llama.model(ids).logits
    vals = torch.randn(2, clean[site].shape[-1])
    rows, heads = torch.tensor([0, 2]), torch.tensor([3, 1])
    with torch.no_grad(), hooks.replace(llama, site, vals, positions=4, rows=rows, heads=heads), \
            hooks.capture(llama, [site]) as got:
        out = llama.model(ids).logits
    want = clean[site].clone()
    want[0, 4, 3], want[2, 4, 1] = vals[0], vals[1]
    assert torch.equal(got[site], want)
    assert torch.equal(out[1], base[1]) and torch.equal(out[:, :4], base[:, :4])  # row 1, earlier positions
    assert not torch.allclose(out[0, 4:], base[0, 4:])
    # a head site replaces that head; prompt_only leaves the second forward alone
    one = Site("head", 1, 2)
    with torch.no_grad(), hooks.replace(llama, one, vals[:1].expand(3, -1), positions=-1, prompt_only=True):
        first, second = llama.model(ids).logits, llama.model(ids).logits
    assert not torch.allclose(first[:, -1], base[:, -1]) and torch.equal(second, base)


def test_add_masks_rows_and_new_tokens(llama):
    ids = _ids(llama)
    site = Site("resid", 0)
    with torch.no_grad(), hooks.capture(llama, [site]) as clean:
        llama.model(ids)
    d = torch.randn(3, clean[site].shape[-1])
    mask = torch.arange(9)[None, :] >= torch.tensor([2, 5, 7])[:, None]
    with torch.no_grad(), hooks.add(llama, site, d, positions=mask), hooks.capture(llama, [site]) as got:
        llama.model(ids)
    assert torch.allclose(got[site], clean[site] + d[:, None, :] * mask[..., None])
    with torch.no_grad(), hooks.add(llama, site, d[:2], rows=torch.tensor([2, 0])), hooks.capture(llama, [site]) as got:
        llama.model(ids)
    want = clean[site].clone()
    want[2] += d[0]
    want[0] += d[1]
    assert torch.allclose(got[site], want)
    # new_tokens: the first forward at its positions, later forwards (generation steps) everywhere
    with torch.no_grad(), hooks.add(llama, site, d, positions=-1, new_tokens=True), \
            hooks.capture(llama, [site]) as got:
        llama.model(ids)
        first = got[site]
        llama.model(ids)
    assert torch.allclose(first[:, -1], clean[site][:, -1] + d) and torch.equal(first[:, :-1], clean[site][:, :-1])
    assert torch.allclose(got[site], clean[site] + d[:, None, :])


def test_hooks_are_removed_even_when_the_forward_raises(llama):
    mods = [m for m in llama.model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert mods == []
    with pytest.raises(RuntimeError), hooks.add(llama, Site("resid", 1), torch.zeros(5)):
        llama.model(_ids(llama))  # a [5] delta cannot broadcast to hidden 32
    assert [m for m in llama.model.modules() if m._forward_hooks or m._forward_pre_hooks] == []
