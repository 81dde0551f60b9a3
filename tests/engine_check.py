"""The numba engine against ONNX Runtime on one exported artifact, for the model-source tests and scripts."""
import numpy as np

# Parameters whose exact gradient is 0: softmax ignores a shift of every score, so the key projection's bias
# does not change the loss. Both engines move it by rounding noise amplified by AdamW's normalisation (up to
# ~1e-5 here), different noise in each: they are checked to stay near 0, not to agree.
ZERO_GRADIENT = ("k_proj.bias",)
# 5 AdamW steps at lr 0.01 move a parameter with a real gradient by ~0.05 per element.
ZERO_GRADIENT_DRIFT = 1e-3
# What ``compare_engines`` measures, and the bound each must stay under.
LIMITS = {"eval_before": 1e-5, "loss": 1e-4, "parameters": 1e-4, "zero_gradient_drift": ZERO_GRADIENT_DRIFT,
          "eval_after": 1e-4}


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-12))


def parameter_differences(mine, theirs, initial):
    """((largest relative difference between the engines, its parameter), (largest move of a ZERO_GRADIENT
    parameter from its initial value on either engine, its parameter)); the names must be the same sets."""
    assert mine.keys() == theirs.keys() == initial.keys()
    worst, drift = (0.0, None), (0.0, None)
    for name in mine:
        if name.endswith(ZERO_GRADIENT):
            move = max(np.abs(mine[name] - initial[name]).max(), np.abs(theirs[name] - initial[name]).max())
            drift = max(drift, (float(move), name), key=lambda item: item[0])
        else:
            worst = max(worst, (rel(mine[name], theirs[name]), name), key=lambda item: item[0])
    return worst, drift


def assert_parameters_match(mine, theirs, initial, rtol=1e-4):
    (worst, name), (drift, moved) = parameter_differences(mine, theirs, initial)
    assert worst < rtol, name
    assert drift < ZERO_GRADIENT_DRIFT, moved


def compare_engines(folder, input_shape, classes, steps=5, seed=0):
    """Load ``folder`` on both engines, train ``steps`` steps on the same random batches of 3 and return what
    ``LIMITS`` bounds: the relative difference of eval logits on 2 probe inputs before and after training, the
    largest relative loss difference and ``parameter_differences``' two maxima."""
    import edge_lbp

    numba, ort = edge_lbp.load(folder, "numba"), edge_lbp.load(folder, "ort")
    initial = numba.state.parameters()
    rng = np.random.default_rng(seed)
    probe = rng.standard_normal((2, *input_shape)).astype(np.float32)
    measured = {"eval_before": rel(numba.eval_step(probe), ort.eval_step(probe)), "loss": 0.0}
    for _ in range(steps):
        x = rng.standard_normal((3, *input_shape)).astype(np.float32)
        y = rng.integers(0, classes, 3)
        mine, theirs = numba.train_step(x, y), ort.train_step(x, y)
        measured["loss"] = max(measured["loss"], abs(mine - theirs) / max(abs(theirs), 1e-12))
    (measured["parameters"], _), (measured["zero_gradient_drift"], _) = parameter_differences(
        numba.state.parameters(), ort.state.parameters(), initial)
    measured["eval_after"] = rel(numba.eval_step(probe), ort.eval_step(probe))
    return measured


def exceeded(measured):
    """The names of the measurements of ``compare_engines`` that are not under their ``LIMITS``."""
    return [name for name, limit in LIMITS.items() if not measured[name] < limit]


def compare_random_training(folder, probe, want, classes, steps=3, seed=0):
    """For an artifact whose training graph draws random numbers (dropout, drop-path), where the engines cannot
    agree: both engines' eval logits on ``probe`` against ``want`` (the model's in eval mode), relative; whether the
    numba engine repeats its losses from the same session seed, and whether another seed changes them."""
    import edge_lbp

    measured = {f"eval_{engine}": rel(edge_lbp.load(folder, engine).eval_step(probe), want)
                for engine in ("numba", "ort")}
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((4, *probe.shape[1:])).astype(np.float32), rng.integers(0, classes, 4))
               for _ in range(steps)]

    def losses(session_seed):
        session = edge_lbp.load(folder, "numba", seed=session_seed)
        return [session.train_step(x, y) for x, y in batches]

    first = losses(1)
    measured["repeats"], measured["seed_matters"] = first == losses(1), first != losses(2)
    return measured


def assert_side_gradients_match(folder, x, y, threads=1):
    """A side-tuned artifact: the numba engine's gradients equal ORT's on the same graph, and ORT's step changes
    the side network only. ORT runs one SGD step at a large learning rate: (before - after) / lr is its gradient,
    to float32 rounding of the difference (lr · g dominates the parameter after the step)."""
    import pytest

    import edge_lbp

    numba, ort = edge_lbp.load(folder, "numba", threads=threads), edge_lbp.load(folder, "ort", threads=threads)
    loss = numba.forward_backward(x, y)
    before = ort.state.parameters()
    ort.optimizer.set_learning_rate(1e3)
    assert ort.train_step(x, y) == pytest.approx(loss, rel=1e-5)
    after = ort.state.parameters()
    mine = numba.gradients()
    assert mine and sorted(mine) == sorted(n for n in before if n.startswith("side."))
    for name, grad in mine.items():
        theirs = (before[name].astype(np.float64) - after[name]) / 1e3
        assert np.linalg.norm(grad - theirs) <= 1e-4 * np.linalg.norm(theirs) + 1e-8, name
    assert all(np.array_equal(before[n], after[n]) for n in before if not n.startswith("side."))
