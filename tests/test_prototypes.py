"""SwaVPrototypes: drop-in for lightly's (same parameters from the same seed, same outputs,
same freezing), normalize() and load_centroids()."""
import pytest
import torch

from jem_fast.nn import SwaVPrototypes

try:
    from lightly.models.modules.heads import SwaVPrototypes as LightlySwaVPrototypes
except Exception:  # noqa: BLE001 - lightly missing or not importable beside this torch
    LightlySwaVPrototypes = None

needs_lightly = pytest.mark.skipif(LightlySwaVPrototypes is None, reason="lightly not importable")


@needs_lightly
@pytest.mark.parametrize("n_prototypes", [17, [5, 9, 3]])
def test_matches_lightly(n_prototypes):
    torch.manual_seed(0)
    ours = SwaVPrototypes(12, n_prototypes, n_steps_frozen_prototypes=3)
    torch.manual_seed(0)
    theirs = LightlySwaVPrototypes(12, n_prototypes, n_steps_frozen_prototypes=3)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(6, 12)
    for step in (0, 2, 3, 10):
        a, b = ours(x, step=step), theirs(x, step=step)
        a, b = ([a], [b]) if isinstance(n_prototypes, int) else (a, b)
        assert isinstance(a, list) or isinstance(n_prototypes, int)
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
        assert [p.requires_grad for p in ours.parameters()] == \
               [p.requires_grad for p in theirs.parameters()]
    with torch.no_grad():
        ours.normalize()
        theirs.normalize()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)
    # lightly accepts the state dict of ours and vice versa.
    theirs.load_state_dict(ours.state_dict())


def test_forward_shapes_and_freezing():
    single = SwaVPrototypes(8, 10)
    out = single(torch.randn(4, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)
    multi = SwaVPrototypes(8, [10, 3])
    outs = multi(torch.randn(4, 8))
    assert isinstance(outs, list) and [o.shape for o in outs] == [(4, 10), (4, 3)]
    frozen = SwaVPrototypes(8, 10, n_steps_frozen_prototypes=5)
    with pytest.raises(ValueError, match="step"):
        frozen(torch.randn(2, 8))
    x = torch.randn(2, 8, requires_grad=True)
    frozen(x, step=4).sum().backward()
    assert all(p.grad is None for p in frozen.parameters()) and x.grad is not None
    frozen(x, step=5).sum().backward()
    assert all(p.grad is not None for p in frozen.parameters())


def test_normalize_and_load_centroids():
    p = SwaVPrototypes(6, [4, 5])
    with torch.no_grad():
        p.heads[0].weight[1].zero_()
    p.normalize()  # no torch.no_grad needed, and a zero row stays zero
    norms = p.heads[0].weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(p.heads[1].weight.norm(dim=1), torch.ones(5))
    assert p.heads[0].weight.requires_grad
    cs = [torch.randn(4, 6), torch.randn(5, 6)]
    p.load_centroids(cs)
    assert torch.equal(p.heads[0].weight, cs[0]) and torch.equal(p.heads[1].weight, cs[1])
    with pytest.raises(ValueError, match="one per head"):
        p.load_centroids(cs[:1])
    with pytest.raises(ValueError, match="shape"):
        p.load_centroids([cs[0], cs[0]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_prototypes"):
        SwaVPrototypes(8, [])
    with pytest.raises(ValueError, match="n_prototypes"):
        SwaVPrototypes(8, 0)
    with pytest.raises(TypeError, match="n_prototypes"):
        SwaVPrototypes(8, 3.5)
    with pytest.raises(ValueError, match="n_steps_frozen_prototypes"):
        SwaVPrototypes(8, 3, n_steps_frozen_prototypes=-1)
