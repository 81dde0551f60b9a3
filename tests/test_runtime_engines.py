"""The numba engine against ONNX Runtime training on the same artifacts, step for step."""
import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.runtime.graph import Graph  # noqa: E402
from subprocess_guard import BLOCK_WORKSTATION  # noqa: E402

FAMILIES = ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]
TRAINABLE_SETS = ["all", "last:1", "bias", "head"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Exported lazily and shared: (family, lbp, optimizer, trainable) -> artifact folder."""
    made = {}

    def get(family, lbp="lp-tri:4", optimizer="adamw", train="all"):
        key = (family, lbp, optimizer, train)
        if key not in made:
            folder = tmp_path_factory.mktemp("artifact") / "-".join(key).replace(":", "")
            export_model(family, folder, lbp=lbp, optimizer=optimizer, method=train, lr=0.01)
            made[key] = folder
        return made[key]

    return get


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-12))


@pytest.mark.parametrize("family, lbp, optimizer",
                         list(itertools.product(FAMILIES, ["none", "lp-tri:4"], ["adamw", "sgd"])))
def test_numba_engine_matches_ort(artifacts, family, lbp, optimizer):
    folder = artifacts(family, lbp, optimizer)
    numba, ort = edge_lbp.load(folder, "numba"), edge_lbp.load(folder, "ort")
    rng = np.random.default_rng(0)
    shape = tuple(numba.artifact.manifest["inputs"][0]["shape"][1:])
    probe = rng.standard_normal((2, *shape)).astype(np.float32)
    assert _rel(numba.eval_step(probe), ort.eval_step(probe)) < 1e-5
    for _ in range(5):
        x = rng.standard_normal((3, *shape)).astype(np.float32)
        y = rng.integers(0, 10, 3)
        assert numba.train_step(x, y) == pytest.approx(ort.train_step(x, y), rel=1e-4)
    mine, theirs = numba.state.parameters(), ort.state.parameters()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert _rel(mine[name], theirs[name]) < 1e-4, name
    assert _rel(numba.eval_step(probe), ort.eval_step(probe)) < 1e-4


@pytest.mark.parametrize("lbp", ["none", "lp-tri:4"])
def test_weight_gradients_go_straight_into_their_buffers(artifacts, lbp):
    """Every weight matrix's gradient is written by the op that computes it (the load-time fusion), and the
    fused ops still accumulate: two micro-batches add up to the sum of their gradients taken one at a time."""
    session = edge_lbp.load(artifacts("vit-tiny", lbp, "sgd"), "numba")
    fused = [s for s in session.training.steps if s.op_type in ("GemmAccumulate", "WHTMatMulGradAccumulate")]
    matrices = [n for n in session.artifact.trainable if session.state.params[n].ndim == 2]
    assert len(fused) == len(matrices) > 0
    if lbp != "none":  # every rewritten layer's weight trains here: no WHTMatMulGrad is left unfused
        assert any(s.op_type == "WHTMatMulGradAccumulate" for s in fused)
        assert not any(s.op_type == "WHTMatMulGrad" for s in session.training.steps)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    ys = [rng.integers(0, 10, 2) for _ in range(2)]
    alone = []
    for x, y in zip(xs, ys):
        session.forward_backward(x, y)
        alone.append({n: g.copy() for n, g in session.gradients().items()})
    session.forward_backward(xs[0], ys[0])
    session.forward_backward(xs[1], ys[1], accumulate=True)
    for name, grad in session.gradients().items():
        np.testing.assert_allclose(grad, alone[0][name] + alone[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_op_of_every_artifact_has_a_kernel(artifacts, family):
    """Loading builds every kernel, so a graph with an op the engine lacks fails here, naming it."""
    for train, optimizer in itertools.product(TRAINABLE_SETS, ["adamw", "sgd"]):
        session = edge_lbp.load(artifacts(family, "lp-tri:4", optimizer, train), "numba")
        assert isinstance(session.training, Graph) and session.training.steps




def test_training_step_on_the_device_path_alone(artifacts, tmp_path):
    """A full training step in a process where torch and onnxruntime cannot be imported."""
    folder = artifacts("vit-tiny")
    code = BLOCK_WORKSTATION + textwrap.dedent(f"""
        import sys
        import numpy as np
        import edge_lbp
        session = edge_lbp.load({str(folder)!r}, "numba")
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((2, 3, 32, 32)).astype(np.float32), np.array([1, 2])
        losses = [session.train_step(x, y) for _ in range(3)]
        assert losses[-1] < losses[0], losses
        print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime")))
        print("loss", losses)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "modules: []" in result.stdout


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_gradient_accumulation_matches_ort(artifacts, scale):
    """Two half batches accumulated into the gradient buffers, then one update: the same as ORT doing it; with a
    gradient ``scale`` (the micro-batch mean as the Trainer asks for it), numba scales its gradient buffers, ORT
    (gradients out of reach) SGD's learning rate, which is exact. (For AdamW ORT leaves the update as it is:
    scale-invariant but for its eps.)"""
    folder = artifacts("vit-tiny", "lp-tri:4", "sgd")
    numba, ort = edge_lbp.load(folder, "numba"), edge_lbp.load(folder, "ort")
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)
    for session in (numba, ort):
        session.forward_backward(x[:2], y[:2])
        session.forward_backward(x[2:], y[2:], accumulate=True)
        session.optimizer.step(gradient_scale=scale)
    for name, value in numba.state.parameters().items():
        assert _rel(value, ort.state.parameters()[name]) < 1e-4, name


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_both_engines_declare_the_optimizer_alike(artifacts, optimizer):
    folder = artifacts("vit-tiny", "lp-tri:4", optimizer)
    numba, ort = edge_lbp.load(folder, "numba"), edge_lbp.load(folder, "ort")
    assert numba.optimizer.kind == ort.optimizer.kind == optimizer
    assert numba.optimizer.moments == ort.optimizer.moments
    assert len(ort.optimizer.moments) == (2 if optimizer == "adamw" else 0)


def test_numba_trace_splits_the_step_into_phases(artifacts):
    session = edge_lbp.load(artifacts("vit-tiny"), "numba")
    trace = []
    session.train_step(np.zeros((2, 3, 32, 32), np.float32), np.array([0, 1]), trace=trace)
    phases = [t[0] for t in trace]
    assert set(phases) == {"forward", "backward", "optimizer"}
    assert phases.index("backward") > phases.index("forward") and phases[-1] == "optimizer"
    loss_grad = [t for t in trace if t[1] == "SoftmaxCrossEntropyLossGrad"]
    assert loss_grad and loss_grad[0][0] == "backward"
    assert all(t[3] <= t[4] for t in trace)
