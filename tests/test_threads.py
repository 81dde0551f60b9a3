"""The numba engine's per-pass thread count: the tuner's choices, and that the count changes no result."""
from pathlib import Path

import numba
import numpy as np
import pytest
import edge_lbp
from edge_lbp.runtime import threads as threads_mod
from edge_lbp.runtime.kernels import norm
from edge_lbp.runtime.threads import REPROBE, ThreadTuner

TINY = Path(__file__).parent / "fixtures" / "tiny_vit"

NEEDS_TWO = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 cores to vary the thread count")


def _run(tuner, batch, seconds_for, passes):
    chosen = []
    for _ in range(passes):
        count = tuner.choose(batch)
        tuner.record(batch, count, seconds_for[count])
        chosen.append(count)
    return chosen


def test_tuner_tries_each_count_then_keeps_the_fastest_and_reprobes():
    tuner = ThreadTuner(2)
    assert tuner.candidates == (2, 1)
    chosen = _run(tuner, 4, {2: 12.0, 1: 3.0}, 4 + 2 * REPROBE)
    assert chosen[:4] == [2, 2, 1, 1]
    assert tuner.best(4) == 1
    later = chosen[4:]
    assert later.count(2) == 2 and all(later[i] == 2 for i in (REPROBE - 1, 2 * REPROBE - 1))


def test_tuner_follows_a_core_that_frees_up():
    tuner = ThreadTuner(2)
    _run(tuner, 8, {2: 12.0, 1: 3.0}, 4)
    assert tuner.best(8) == 1
    # The neighbour is gone: 2 threads now take 1.5 s. The re-probes see it, and 2 threads win again.
    _run(tuner, 8, {2: 1.5, 1: 3.0}, 3 * REPROBE)
    assert tuner.best(8) == 2


def test_tuner_keeps_batch_sizes_apart_and_offers_half_and_one_less():
    tuner = ThreadTuner(4)
    assert tuner.candidates == (4, 3, 2)
    _run(tuner, 4, {4: 1.0, 3: 2.0, 2: 3.0}, 6)
    assert tuner.best(4) == 4 and tuner.best(32) is None
    assert ThreadTuner(1).candidates == (1,)


def test_a_fixed_count_is_not_tuned():
    fixed = threads_mod.Threads(1)
    assert fixed.tuner is None and fixed.before(4) == 1


@NEEDS_TWO
def test_layernorm_gradient_sums_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(0)
    rows, m = 788, 768
    dy, x, addend = rng.standard_normal((3, rows, m)).astype(np.float32)
    scale = rng.standard_normal(m).astype(np.float32)
    mean = x.mean(axis=1).astype(np.float32)
    inv = (1 / np.sqrt(x.var(axis=1) + 1e-5)).astype(np.float32)
    results = []
    for count in (1, 2):
        numba.set_num_threads(count)
        # with the residual gradient added and its column sums (runtime.norm_passes), the sums too
        results.append(norm._layernorm_grad(dy, x, scale, mean, inv, norm.GRAD_BLOCKS, addend, True, True))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@NEEDS_TWO
def test_tuned_training_gives_the_numbers_of_a_fixed_thread_count(monkeypatch):
    """The tuner switches counts every pass here (REPROBE=1 leaves no pass to the favourite alone); the losses and
    parameters equal those of one fixed thread exactly."""
    monkeypatch.setattr(threads_mod, "REPROBE", 1)
    runs = []
    for threads in (1, None):
        session = edge_lbp.load(TINY, "numba", threads=threads)
        rng = np.random.default_rng(0)
        shape = session.artifact.manifest["inputs"][0]["shape"][1:]
        losses = [session.train_step(rng.standard_normal((4, *shape)).astype(np.float32), rng.integers(0, 4, 4))
                  for _ in range(8)]
        runs.append((losses, session.state.parameters(), session.threads))
    (fixed_losses, fixed_params, _), (tuned_losses, tuned_params, tuned) = runs
    assert tuned.tuner.best(4) is not None  # both counts ran
    assert fixed_losses == tuned_losses
    for name in fixed_params:
        np.testing.assert_array_equal(fixed_params[name], tuned_params[name], err_msg=name)
