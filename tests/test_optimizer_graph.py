"""Our optimizer graphs (edge_lbp.core.gradients.build_optimizer_graph): laid out as onnxruntime-training's (the
same inputs, node, attributes and output, where ORT-training is installed), and trained on the numba engine they
update the parameters as the closed forms of SGD and AdamW say."""
import numpy as np
import onnx
import pytest

from edge_lbp.core.defaults import OPTIMIZERS
from edge_lbp.core.gradients import build_optimizer_graph
from onnx_models import CLASSES, INPUT_SHAPE, small_classifier

LR, STEPS, BATCH = 0.05, 4, 3


def _closed_form(optimizer, w, g, moments, t):
    """One update in float64: plain SGD, or AdamW as ORT's block writes it (adam_mode 1: the bias corrections
    folded into the step size, eps added to sqrt(v); betas 0.9 / 0.999, eps 1e-6, no weight decay)."""
    if optimizer == "sgd":
        return w - LR * g
    m, v = moments
    m[:] = 0.9 * m + 0.1 * g
    v[:] = 0.999 * v + 0.001 * g * g
    return w - LR * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-6)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_training_with_our_optimizer_graph_follows_the_closed_form(optimizer, tmp_path):
    """Each of STEPS updates on the numba engine, from the gradients the engine computed, is the closed form's."""
    import edge_lbp

    onnx.save(small_classifier(), tmp_path / "model.onnx")
    edge_lbp.export_model(str(tmp_path / "model.onnx"), tmp_path / "art", optimizer=optimizer, lr=LR, lbp="none",
                          gradients="own")
    session = edge_lbp.load(tmp_path / "art", "numba")
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) for k, v in session.state.parameters().items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    for t in range(1, STEPS + 1):
        x = rng.standard_normal((BATCH, *INPUT_SHAPE)).astype(np.float32)
        session.forward_backward(x, rng.integers(0, CLASSES, BATCH))
        grads = {k: v.astype(np.float64) for k, v in session.gradients().items()}
        session.optimizer.step()
        after = session.state.parameters()
        for name, w in params.items():
            params[name] = _closed_form(optimizer, w, grads[name], moments[name], t)
            np.testing.assert_allclose(after[name], params[name], rtol=1e-5, atol=1e-6, err_msg=f"{name}, step {t}")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_graph_is_laid_out_as_orts(optimizer, tmp_path):
    """ORT numbers the node's and the output's names with a process-wide counter: a fresh process writes ours."""
    pytest.importorskip("onnxruntime.training", reason="onnxruntime-training (the oracle) is not installed")
    import subprocess
    import sys

    onnx.save(small_classifier(), tmp_path / "model.onnx")
    script = ("import sys, onnx\nfrom onnxruntime.training import artifacts\n"
              "artifacts.generate_artifacts(onnx.load(sys.argv[1]), requires_grad=['w1', 'b1', 'w2', 'b2'], frozen_params=[], "
              "loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType[sys.argv[2]], "
              "artifact_directory=sys.argv[3])\n")
    name = {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.onnx"), name, str(tmp_path)], check=True,
                   capture_output=True)
    ours, ref = build_optimizer_graph(optimizer), onnx.load(tmp_path / "optimizer_model.onnx")
    assert ours.graph == ref.graph
    assert ours.ir_version == ref.ir_version and list(ours.opset_import) == list(ref.opset_import)
    onnx.checker.check_model(ours)


def test_unknown_optimizer_is_one_line():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; choose one of adamw, sgd"):
        build_optimizer_graph("lamb")
