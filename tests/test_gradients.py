"""Our gradient builder (edge_lbp.core.gradients): the training graph it builds, run by the numba engine's graph
executor, against torch autograd on the same module, parameters, inputs and labels (loss and every parameter
gradient), one small model per rule and whole models; and its naming against what the engines read."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch", reason="the export extra is not installed (the reference is torch autograd)")
nn = torch.nn

from edge_lbp.core import ort_names  # noqa: E402
from edge_lbp.core.gradients import GradientError, build_training_graph  # noqa: E402
from edge_lbp.export.onnx_export import export_forward  # noqa: E402
from edge_lbp.export.training import parameter_names  # noqa: E402
from edge_lbp.runtime.graph import Graph  # noqa: E402
from edge_lbp.runtime.passes import training_passes  # noqa: E402

BATCH = 3


def _one_pass(training, forward, trainable, frozen, x, labels):
    """Loss and accumulated gradients of one pass of a training graph on the graph executor, after the numba
    session's load-time passes (training_passes: weight gradients into their accumulators, bias adds and sums)."""
    params = {t.name: numpy_helper.to_array(t) for t in forward.graph.initializer}
    buffers = {p: np.full_like(params[p], np.nan) for p in trainable}  # overwritten: lazy_reset_grad is set
    feeds = {"input": x, ort_names.LABELS: labels, ort_names.LAZY_RESET: np.array([True]),
             **{p: params[p] for p in trainable + frozen},
             **{ort_names.accumulation_buffer(p): b for p, b in buffers.items()}}
    loss = Graph(training_passes(training), name="training graph").run(feeds)[0]
    return float(loss), buffers


def _grads_ours(forward, trainable, frozen, x, labels):
    training = build_training_graph(forward, trainable, frozen)
    onnx.checker.check_model(training)
    return _one_pass(training, forward, trainable, frozen, x, labels)


def _grads_torch(module, x, labels):
    module.zero_grad()
    loss = nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(labels))
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in module.named_parameters() if p.grad is not None}


def check(module, input_shape, classes, frozen=()):
    """Our gradients of ``module`` equal torch's (1e-5 relative to each gradient's largest entry)."""
    torch.manual_seed(0)
    forward = export_forward(module, input_shape)
    names = parameter_names(forward)
    trainable = [n for n in names if n not in frozen]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *input_shape)).astype(np.float32)
    labels = rng.integers(0, classes, BATCH).astype(np.int64)
    loss, ours = _grads_ours(forward, trainable, list(frozen), x, labels)
    ref_loss, ref = _grads_torch(module, x, labels)
    assert set(ours) == set(trainable) and set(trainable) <= set(ref)
    _assert_same(loss, ours, ref_loss, ref)
    return forward


def _assert_same(loss, grads, ref_loss, ref):
    """Loss and each gradient within 1e-5 (relative to the reference gradient's largest entry)."""
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for name, grad in grads.items():
        scale = max(float(np.abs(ref[name]).max()), 1e-6)
        np.testing.assert_allclose(grad, ref[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)


class Op(nn.Module):
    """One op around parameters: ``fn(self, x)``."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, shape in params.items():
            setattr(self, name, nn.Parameter(torch.randn(*shape) * 0.5 + (1.5 if name == "pos" else 0.0)))

    def forward(self, x):
        return self.fn(self, x)


# name -> (module factory, input shape, classes). The logits must be (batch, classes): some models flatten.
CASES = {
    "matmul_weight": (lambda: Op(lambda m, x: (x @ m.w).flatten(1), w=(4, 3)), (2, 4), 6),
    "matmul_batched": (lambda: Op(lambda m, x: ((x * m.a) @ (x * m.b).transpose(1, 2)).flatten(1),
                                  a=(4,), b=(4,)), (3, 4), 9),
    "gemm": (lambda: nn.Linear(5, 4), (5,), 4),
    "gemm_untransposed": (lambda: Op(lambda m, x: torch.addmm(m.c, x, m.w), w=(5, 4), c=(4,)), (5,), 4),
    "add_sub": (lambda: Op(lambda m, x: (x + m.b) - m.c * x, b=(5,), c=(1, 5)), (5,), 5),
    "mul": (lambda: Op(lambda m, x: x * m.w * m.v, w=(5,), v=(1, 1)), (5,), 5),
    "div": (lambda: Op(lambda m, x: x / m.pos + m.w / m.pos, pos=(5,), w=(5,)), (5,), 5),
    "pow": (lambda: Op(lambda m, x: (x * m.w) ** 2 + m.pos ** (x * m.v), w=(5,), v=(5,), pos=(5,)), (5,), 5),
    "sqrt_exp_erf": (lambda: Op(lambda m, x: torch.sqrt(x * x * m.pos + 1) + torch.exp(x * m.w) + torch.erf(x * m.v),
                                pos=(5,), w=(5,), v=(5,)), (5,), 5),
    "tanh": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh()), (5,), 4),
    "gelu_tanh": (lambda: nn.Sequential(nn.Linear(5, 4), nn.GELU(approximate="tanh")), (5,), 4),
    "cast": (lambda: Op(lambda m, x: (x.double() * m.w.double()).float(), w=(5,)), (5,), 5),
    "dropout_none": (lambda: Op(lambda m, x: nn.functional.dropout(x * m.w, 0.0, training=True), w=(5,)), (5,), 5),
    **{f"resize_{mode}": (lambda mode=mode: Op(lambda m, x: nn.functional.interpolate(
        x * m.w, size=(6, 5), mode=mode, **({} if mode == "nearest" else {"align_corners": False})).flatten(1),
        w=(2, 4, 1)), (2, 4, 4), 60) for mode in ("bicubic", "bilinear", "nearest")},
    # Sizes read from the input at run time (as DINOv2's position embeddings): shape inference cannot tell the
    # resized parameter is broadcast along the batch, nor how many elements the mean divides by.
    "resize_run_time_shapes": (lambda: Op(lambda m, x: (x + nn.functional.interpolate(
        m.p, size=x.shape[-2:], mode="bicubic", align_corners=False).mean(dim=-1, keepdim=True)).flatten(1),
        p=(1, 2, 3, 3)), (2, 4, 5), 40),
    "relu": (lambda: nn.Sequential(nn.Linear(5, 4), nn.ReLU()), (5,), 4),
    "gelu": (lambda: nn.Sequential(nn.Linear(5, 4), nn.GELU()), (5,), 4),
    # On tokens the bias is an Add of its own, which BiasGelu takes in.
    "bias_gelu": (lambda: nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Flatten()), (3, 4), 15),
    "softmax": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Softmax(dim=-1)), (5,), 4),
    "layernorm": (lambda: nn.LayerNorm(5), (5,), 5),
    "reshape_transpose": (lambda: Op(lambda m, x: (x @ m.w).reshape(-1, 2, 3).transpose(1, 2).reshape(-1, 6),
                                     w=(4, 6)), (4,), 6),
    "reduce_mean": (lambda: Op(lambda m, x: (x * m.w).mean(dim=1), w=(4,)), (3, 4), 4),
    "concat": (lambda: Op(lambda m, x: torch.cat([x @ m.a, x * m.b], dim=-1), a=(4, 2), b=(4,)), (4,), 6),
    "concat_expand": (lambda: Op(lambda m, x: torch.cat([m.cls.expand(x.shape[0], -1, -1), x * m.w], 1)
                                 .flatten(1), cls=(1, 1, 4), w=(4,)), (2, 4), 12),
    "slice": (lambda: Op(lambda m, x: (x @ m.w)[:, 1:5], w=(4, 6)), (4,), 4),
    "gather": (lambda: Op(lambda m, x: (x @ m.w)[:, 0], w=(4, 5)), (3, 4), 5),
    "split": (lambda: Op(lambda m, x: (lambda q, k: q * k)(*(x @ m.w).chunk(2, dim=-1)), w=(4, 6)), (4,), 3),
    "conv": (lambda: nn.Sequential(nn.Conv2d(2, 3, 2, stride=2), nn.Flatten()), (2, 4, 4), 12),
    # No conv bias: batch normalisation cancels it, and its gradient is rounding noise around 0.
    "batchnorm": (lambda: nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.Flatten()),
                  (2, 2, 2), 12),
    "pad": (lambda: Op(lambda m, x: nn.functional.pad(x * m.w, (1, 2, 0, 1)).flatten(1), w=(3, 4)), (3, 4), 28),
    "global_average_pool": (lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                            (2, 3, 3), 3),
    "cast": (lambda: Op(lambda m, x: (x * m.w).double().float(), w=(5,)), (5,), 5),
    # Dropout that cannot drop (ratio 0, as Hugging Face configurations export it): the identity.
    "dropout_ratio_0": (lambda: Op(lambda m, x: nn.functional.dropout(x * m.w, 0.0, training=True), w=(5,)),
                        (5,), 5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_matches_torch_autograd(case):
    factory, shape, classes = CASES[case]
    torch.manual_seed(0)
    check(factory(), shape, classes)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.norm(self.fc1(x))))


def test_mlp_matches_torch_and_is_laid_out_as_ort_lays_it_out():
    torch.manual_seed(0)
    forward = check(Mlp(), (8,), 4, frozen=("fc2.bias",))
    training = build_training_graph(forward, ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"],
                                    ["fc2.bias"])
    graph = training.graph
    # What onnxruntime-training 1.19 emits for this model and split (tests/benchmarks/dump_ort_graph.py).
    trainable = ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"]
    assert [i.name for i in graph.input] == ["input", "labels", *trainable, "fc2.bias",
                                             *map(ort_names.accumulation_buffer, trainable), "lazy_reset_grad"]
    assert [o.name for o in graph.output] == ["onnx::loss::2", *(f"{p}_grad.accumulation.out" for p in trainable)]
    ops = [n.op_type for n in graph.node]
    assert ops.count("Gelu") == 1 and "Erf" not in ops  # torch's erf-form GELU is fused for GeluGrad
    backward = [n for n in graph.node if ort_names.backward_phase(n.name, n.op_type) == "backward"]
    assert all(ort_names.forward_node_of(n.name) or n.op_type in ("SoftmaxCrossEntropyLossGrad",
                                                                   "InPlaceAccumulatorV2") for n in backward)
    accumulated = {n.input[1] for n in graph.node if n.op_type == "InPlaceAccumulatorV2"}
    assert accumulated == {ort_names.gradient(p) for p in trainable}


@pytest.mark.parametrize("preset", ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"])
def test_tiny_presets_match_torch(preset):
    from edge_lbp.export.models import build_model

    torch.manual_seed(0)
    check(build_model(preset), (3, 32, 32), 10)


def test_an_op_without_rule_is_named_in_one_line():
    forward = export_forward(Op(lambda m, x: torch.sin(x * m.w), w=(4,)), (4,))
    with pytest.raises(GradientError) as err:
        build_training_graph(forward, ["w"], [])
    assert str(err.value) == "no gradient rule for node '/Sin' (op Sin); it cannot be trained through"


class DropPath(nn.Module):
    """Drop-path as timm writes it (a RandomUniformLike draw per sample, compared, scaled) and a dropout."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        keep = (torch.rand_like(x[:, :1]) >= 0.5).to(x.dtype) / 0.5
        return self.fc2(nn.functional.dropout(x + self.fc1(x) * keep, 0.3, training=True))


@pytest.mark.parametrize("preset", ["mlp", "vit-tiny", "drop-path"])
def test_opt_in_own_gradients_match_ort_training(preset, tmp_path, export_extra):
    """``gradients="own"`` writes our training graph beside ORT's other artifacts: the same inputs and outputs
    as ORT's training graph for the model, and the same loss and gradients on the engine's executor (which draws
    the same random numbers for the same forward nodes: random draws carry no gradient, dropout's flows through
    its mask)."""
    from edge_lbp.export.models import build_model
    from edge_lbp.export.training import generate_training_artifacts

    torch.manual_seed(0)
    module, shape = {"mlp": (Mlp, (8,)), "drop-path": (DropPath, (8,))}.get(preset, (lambda: build_model(preset),
                                                                                   (3, 32, 32)))
    module = module()
    forward = export_forward(module, shape)
    names = parameter_names(forward)
    trainable, frozen = names[1:], names[:1]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    labels = rng.integers(0, 4, BATCH).astype(np.int64)
    runs = {}
    for builder in ("ort", "own"):
        paths = generate_training_artifacts(forward, tmp_path / builder, trainable, frozen, optimizer="sgd",
                                            gradients=builder)
        model = onnx.load(paths["training_model.onnx"])
        runs[builder] = (*_one_pass(model, forward, trainable, frozen, x, labels), model)
    (loss, ours, model), (ref_loss, ref, ort_model) = runs["own"], runs["ort"]
    assert not any(o.domain == "ai.onnx.training" for o in model.opset_import)  # the file is ours, not ORT's
    assert [i.name for i in model.graph.input] == [i.name for i in ort_model.graph.input]
    # The loss comes first; ORT numbers its name with a counter that depends on the model.
    assert [o.name for o in model.graph.output[1:]] == [o.name for o in ort_model.graph.output[1:]]
    _assert_same(loss, ours, ref_loss, ref)


def test_lbp_rewrite_of_our_graph_matches_the_rewrite_of_orts(tmp_path, export_extra):
    """The LBP rewrite finds the same layers in our vit-tiny graph as in ORT's, and the rewritten graphs give the
    same (approximate, lp-tri:4) loss and gradients."""
    from edge_lbp.export.lbp_rewrite import LbpConfig, apply_lbp
    from edge_lbp.export.models import build_model
    from edge_lbp.export.training import generate_training_artifacts

    torch.manual_seed(0)
    forward = export_forward(build_model("vit-tiny"), (3, 32, 32))
    names = parameter_names(forward)
    paths = generate_training_artifacts(forward, tmp_path, names, [], optimizer="sgd")
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, BATCH)
    runs = []
    for training in (build_training_graph(forward, names, []), onnx.load(paths["training_model.onnx"])):
        rewritten, table = apply_lbp(training, forward, (3, 32, 32), LbpConfig.parse("lp-tri:4"))
        runs.append(([(row["layer"], row["status"]) for row in table], _one_pass(rewritten, forward, names, [], x,
                                                                                  labels)))
    (ours_table, (loss, grads)), (ort_table, (ref_loss, ref)) = runs
    assert ours_table == ort_table and [s for _, s in ours_table].count("rewritten") == 8
    _assert_same(loss, grads, ref_loss, ref)


def test_dropout_gradient_is_the_masked_output_gradient():
    """A Dropout that drops (ratio 0.5, training mode): our builder gives the forward its mask output, and the
    weight's gradient is the closed form x * (softmax(logits) - onehot) / batch * mask / (1 - ratio), read with the
    mask and logits the same pass drew."""
    from onnx import helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal(5).astype(np.float32)
    nodes = [helper.make_node("Mul", ["input", "w"], ["h"], name="scale"),
             helper.make_node("Dropout", ["h", "ratio", "training"], ["logits"], name="drop")]
    graph = helper.make_graph(
        nodes, "dropout", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
         numpy_helper.from_array(np.array(True), "training")])
    forward = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    training = build_training_graph(forward, ["w"], [])
    training.graph.output.extend([onnx.ValueInfoProto(name="logits"), onnx.ValueInfoProto(name="drop_mask")])
    x = rng.standard_normal((8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    grad = np.full_like(w, np.nan)
    feeds = {"input": x, ort_names.LABELS: labels, ort_names.LAZY_RESET: np.array([True]), "w": w,
             ort_names.accumulation_buffer("w"): grad}
    outputs = Graph(training, name="training graph").run(feeds)
    logits, mask = outputs[-2], outputs[-1]
    assert 0 < mask.mean() < 1
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlogits = (p - np.eye(5)[labels]) / 8
    np.testing.assert_allclose(grad, (x * dlogits * mask * 2).sum(0), rtol=1e-5, atol=1e-7)
