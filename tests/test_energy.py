"""``energy:r``: the device picks each layer's r highest-energy bases of the output gradient, computes the
gradients the chosen bases define, and a checkpoint carries the selection so that a resume is bit-exact."""
import numpy as np
import pytest
from onnx import helper

import lbp_reference as ref
from edge_lbp.core import ops
from edge_lbp.core.bases import parse_selection, sequency_order
from edge_lbp.core.energy import AdaptiveBases, LayerEnergy, basis_energies, top_energy
import edge_lbp.runtime.kernels  # noqa: F401  (registers the kernels)
from edge_lbp.runtime import registry
from edge_lbp.core.wht import Projector

GRID, EXTRA, K = (8, 8), 1, 4  # 4 blocks of 4x4 after a CLS token
PLANTED = [(3, 1), (0, 2), (2, 3)]  # not the three lowest sequencies


def _planted_gradient(rng, batch=3, channels=6, noise=0.05):
    """Output gradients built from every basis: the planted ones large, the others small (the reference's
    dense reconstruction, independent of the kernels)."""
    pairs = list(sequency_order(K))
    blocks = (GRID[0] // K) * (GRID[1] // K)
    coeffs = noise * rng.standard_normal((batch, EXTRA + len(pairs) * blocks, channels))
    for pair in PLANTED:
        s = pairs.index(pair)
        coeffs[:, EXTRA + s * blocks:EXTRA + (s + 1) * blocks] = rng.choice([-1.0, 1.0], (batch, blocks, channels))
    return ref.apply(ref.reconstruction_matrix(*GRID, EXTRA, K, pairs), coeffs).astype(np.float32)


def test_top_energy_keeps_the_largest_in_sequency_order_ties_to_the_lower():
    energies = np.zeros(16)
    energies[[9, 2, 14]] = [5.0, 7.0, 5.0]
    chosen = top_energy(energies, 4, 4)
    order = sequency_order(4)
    assert chosen.pairs == (order[0], order[2], order[9], order[14]) and chosen.name == "energy:4"


def test_energy_picks_the_planted_bases_of_a_synthetic_gradient():
    gy = _planted_gradient(np.random.default_rng(0))
    start = Projector.of(GRID, EXTRA, K, "energy:3")
    assert set(start.selection.pairs).isdisjoint(PLANTED)
    layer = LayerEnergy(start, every=1, decay=0.5)
    layer.observe(gy, "reflect")
    assert sorted(layer.projector.selection.pairs) == sorted(PLANTED)
    # the energies themselves, against the reference's dense projection on each basis
    pairs = list(sequency_order(K))
    dense = ref.apply(ref.projection_matrix(*GRID, EXTRA, K, pairs, scale=1.0 / K ** 2), gy)[:, EXTRA:]
    expected = (dense.reshape(gy.shape[0], len(pairs), -1, gy.shape[2]) ** 2).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(basis_energies(layer.all_bases, gy, "reflect"), expected, rtol=1e-5)


def test_running_average_and_schedule():
    rng = np.random.default_rng(1)
    layer = LayerEnergy(Projector.of(GRID, EXTRA, K, "energy:3"), every=2, decay=0.5)
    first, second, third = (_planted_gradient(rng) for _ in range(3))
    for gy in (first, second, third):
        layer.observe(gy, "reflect")
    measured = [basis_energies(layer.all_bases, g, "reflect") for g in (first, third)]  # passes 0 and 2
    np.testing.assert_allclose(layer.energy, 0.5 * measured[0] + 0.5 * measured[1], rtol=1e-12)
    assert layer.passes == 3


def _nodes(projector):
    attrs = ops.node_attributes(projector)
    project = helper.make_node(ops.PROJECT, ["x", "projection"], ["stash"], domain=ops.DOMAIN, **attrs)
    grad = helper.make_node(ops.MATMUL_GRAD, ["stash", "dy", "b", "grad_projection", "reconstruction"],
                            ["dx", "db"], domain=ops.DOMAIN, **attrs)
    return project, grad


def test_engine_gradients_after_reselection_match_the_reference_with_the_chosen_bases():
    rng = np.random.default_rng(2)
    bases = AdaptiveBases(every=1, decay=0.5)
    project, grad = (registry.build(node, bases=bases) for node in _nodes(Projector.of(GRID, EXTRA, K, "energy:3")))
    x = rng.standard_normal((3, EXTRA + 64, 5)).astype(np.float32)
    b = rng.standard_normal((5, 6)).astype(np.float32)  # MatMul's (Ci, Co): the weight is b^T
    start = bases.layers["stash"].projector.selection.pairs
    for step in range(2):  # the first pass measures the planted gradient; the second runs on its choice
        gy = _planted_gradient(rng)
        used = bases.layers["stash"].projector.selection.pairs
        (stash,) = project(x)
        dx, db = grad(stash, gy, b)
    assert used != start and sorted(used) == sorted(PLANTED)
    gx, gw, _ = ref.linear_backward(x, gy, b.T, *GRID, EXTRA, K, list(used))
    np.testing.assert_allclose(dx, gx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, gw.T, rtol=1e-4, atol=1e-5)


def test_energy_rank_must_fit_the_block():
    assert parse_selection("energy:16", 4).rank == 16
    with pytest.raises(ValueError, match="energy rank must be 1..16 for block 4"):
        parse_selection("energy:17", 4)


@pytest.fixture(scope="module")
def energy_artifact(tmp_path_factory):
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
    from edge_lbp.methods import export_model

    folder = tmp_path_factory.mktemp("energy") / "vit-tiny"
    export_model("vit-tiny", folder, lbp="energy:3", block=4, lr=1e-3)
    return folder


def test_selection_survives_a_checkpoint_resume_bit_exactly(energy_artifact, tmp_path):
    from edge_lbp.checkpoint import load_checkpoint
    from edge_lbp.trainer import Trainer

    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(20)]
    straight = Trainer(energy_artifact, threads=1)
    straight_losses = [straight.step(x, y) for x, y in data]
    first = Trainer(energy_artifact, threads=1)
    losses = [first.step(x, y) for x, y in data[:10]]  # measured at passes 0 and 8; the next at 16, resumed
    first.save(tmp_path / "ckpt")
    # The names the previous release wrote too (it kept the bases among the optimizer's entries): its checkpoints
    # resume unchanged.
    tensors, _ = load_checkpoint(tmp_path / "ckpt")
    bases = first.session.state.method_state()["bases"]
    assert {k for k in tensors if k.startswith("bases/")} == {f"bases/{k}" for k in bases}
    resumed = Trainer.resume(tmp_path / "ckpt", threads=1)
    losses += [resumed.step(x, y) for x, y in data[10:]]
    assert np.array_equal(losses, straight_losses)
    mine, theirs = resumed.session.state.method_state()["bases"], straight.session.state.method_state()["bases"]
    assert mine.keys() == theirs.keys() and len(mine) == 3 * 4 * 2  # vit-tiny: 2 blocks of 4 layers
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    start = Projector.of(GRID, 1, K, "energy:3").selection.pairs
    assert any(tuple(map(tuple, mine[k])) != start for k in mine if k.endswith(".pairs"))  # it did adapt
    # and the state is what makes it exact: a resume that forgets it selects differently
    forgetful = Trainer.resume(tmp_path / "ckpt", threads=1)
    forgetful.session.state.set_method_state(Trainer(energy_artifact, threads=1).session.state.method_state())
    assert [forgetful.step(x, y) for x, y in data[10:]] != straight_losses[10:]


def test_ort_engine_refuses_energy_bases_in_one_line(energy_artifact):
    import edge_lbp

    with pytest.raises(ValueError, match="use energy:r bases, which only the numba engine re-selects"):
        edge_lbp.load(energy_artifact, "ort")
