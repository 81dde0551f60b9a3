"""ORT training artifacts: generation per family x trainable set, training steps, parameter lists, errors."""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.training")

from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402

from edge_lbp.core import ort_names  # noqa: E402
from edge_lbp.export import models, onnx_export, training  # noqa: E402
from method_split import split  # noqa: E402

FAMILIES = ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]
CASES = [(f, t) for f in FAMILIES for t in ("all", "head")] + [("vit-tiny", "bias"), ("vit-tiny", "last:1"),
                                                               ("efficientformer-tiny", "bias")]


@pytest.fixture(scope="module")
def exported():
    """preset -> (torch module, forward ModelProto); exported once for the whole file."""
    out = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        module = models.build_model(name)
        cfg = module.config
        out[name] = module, onnx_export.export_forward(module, (cfg.in_chans, cfg.img_size, cfg.img_size))
    return out


def _batch(module, seed=0):
    rng = np.random.default_rng(seed)
    cfg = module.config
    x = rng.standard_normal((4, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)
    return x, rng.integers(0, cfg.num_classes, size=4).astype(np.int64)


def _session(folder):
    state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    module = Module(str(folder / "training_model.onnx"), state, str(folder / "eval_model.onnx"))
    return state, module, Optimizer(str(folder / "optimizer_model.onnx"), module)


@pytest.mark.parametrize("name,trainable", CASES)
def test_artifacts_train_two_steps(exported, tmp_path, name, trainable):
    module, forward = exported[name]
    requires_grad, frozen = split(forward, trainable)
    result = training.generate_training_artifacts(forward, tmp_path, requires_grad, frozen, optimizer="adamw")
    for file in training.ARTIFACT_FILES:
        assert result[file].exists()
    state, session, optimizer = _session(tmp_path)
    assert session.input_names() == ["input", ort_names.LABELS]
    before = {n: state.parameters[n].data.copy() for n in requires_grad + frozen}
    assert {n for n in before if state.parameters[n].requires_grad} == set(requires_grad)
    x, y = _batch(module)
    optimizer.set_learning_rate(1e-2)
    session.train()
    losses = []
    for _ in range(2):
        losses.append(float(session(x, y)))
        optimizer.step()
        session.lazy_reset_grad()
    session.eval()
    losses.append(float(session(x, y)))
    assert np.all(np.isfinite(losses))
    assert losses[1] < losses[0]
    for n, value in before.items():
        changed = not np.array_equal(state.parameters[n].data, value)
        assert changed == (n in requires_grad), n


@pytest.mark.parametrize("name", FAMILIES)
def test_one_sgd_step_matches_torch(exported, tmp_path, name):
    """ORT's gradient graph and SGD update reproduce torch autograd + plain SGD on the same batch."""
    module, forward = exported[name]
    requires_grad, frozen = split(forward)
    training.generate_training_artifacts(forward, tmp_path, requires_grad, frozen, optimizer="sgd")
    state, session, optimizer = _session(tmp_path)
    x, y = _batch(module, seed=1)
    lr = 0.1
    optimizer.set_learning_rate(lr)
    session.train()
    loss = float(session(x, y))
    optimizer.step()

    module.train()
    module.zero_grad()
    torch_loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
    torch_loss.backward()
    assert loss == pytest.approx(torch_loss.item(), rel=1e-5)
    params = dict(module.named_parameters())
    assert set(params) == set(requires_grad)
    for n, p in params.items():
        expected = (p - lr * p.grad).detach().numpy()
        np.testing.assert_allclose(state.parameters[n].data, expected, atol=1e-5, rtol=1e-4, err_msg=n)


def test_sgd_optimizer_graph_has_no_momentum(exported, tmp_path):
    training.generate_training_artifacts(exported["vit-tiny"][1], tmp_path, *split(exported["vit-tiny"][1], "head"),
                                         optimizer="sgd")
    (node,) = onnx.load(tmp_path / "optimizer_model.onnx").graph.node
    assert (node.domain, node.op_type, list(node.input)) == (
        "com.microsoft", "SGDOptimizerV2", ["learning_rate", "params", "gradients"])
    assert not node.attribute


def test_split_parameters_choices(exported):
    forward = exported["vit-tiny"][1]
    names = training.parameter_names(forward)
    assert split(forward, "all") == (names, [])
    head, frozen = split(forward, "head")
    assert head == ["head.weight", "head.bias"] and set(frozen) == set(names) - set(head)
    last, _ = split(forward, "last:1")
    assert last and all(n.startswith(("blocks.1.", "norm.", "head.")) for n in last)
    assert {"blocks.1.attn.qkv.weight", "norm.weight", "head.bias"} <= set(last)
    assert split(forward, "last:99")[0] == [
        n for n in names if n.startswith(("blocks.", "norm.", "head."))]
    bias, _ = split(forward, "bias")
    assert set(bias) == {n for n in names if n.endswith(".bias") or ".norm" in "." + n} | {"head.weight"}


def test_split_parameters_family_specifics(exported):
    deit_head, _ = split(exported["deit-tiny"][1], "head")
    assert deit_head == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]
    ef = exported["efficientformer-tiny"][1]
    names = training.parameter_names(ef)
    assert names and not any("running" in n for n in names)
    bias, _ = split(ef, "bias")
    assert "stages.0.1.weight" in bias  # the stem's BatchNorm scale is a normalisation parameter
    swin_last, _ = split(exported["swin-tiny"][1], "last:2")
    assert "blocks.2.merge.reduction.weight" in swin_last and not any(n.startswith("blocks.1.") for n in swin_last)


@pytest.mark.parametrize("choice", ["some", "last:0", "last:x", "Head"])
def test_unknown_trainable_set(exported, choice):
    with pytest.raises(ValueError, match="unknown method"):
        split(exported["vit-tiny"][1], choice)


def test_unknown_optimizer(exported, tmp_path):
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.generate_training_artifacts(exported["vit-tiny"][1], tmp_path, [], [], optimizer="lamb")


def test_op_without_gradient_gives_one_line_error(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Hardswish(), torch.nn.Linear(8, 3))
    forward = onnx_export.export_forward(module, (8,))
    with pytest.raises(training.GradientError) as err:
        training.generate_training_artifacts(forward, tmp_path, *split(forward))
    message = str(err.value)
    assert "\n" not in message
    assert "'/1/HardSwish'" in message and "op HardSwish" in message
