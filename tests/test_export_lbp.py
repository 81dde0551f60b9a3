"""The LBP rewrite pass, checked with ONNX Runtime training executing the edge_lbp function bodies."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402

from edge_lbp.core import ops  # noqa: E402
from edge_lbp.export.lbp_rewrite import LbpConfig, LinearLayer, apply_lbp, find_linear_layers, layer_geometry  # noqa: E402
from edge_lbp.export.models import build_model  # noqa: E402
from edge_lbp.export.onnx_export import export_forward  # noqa: E402
from edge_lbp.export.training import generate_training_artifacts  # noqa: E402
from method_split import split  # noqa: E402
from edge_lbp.core.wht import linear_backward  # noqa: E402

FAMILIES = ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """Forward graph and SGD artifacts (all parameters trainable) of one family."""
    model = build_model(request.param)
    shape = (model.config.in_chans, model.config.img_size, model.config.img_size)
    forward = export_forward(model, shape)
    folder = tmp_path_factory.mktemp(request.param)
    generate_training_artifacts(forward, folder, *split(forward), optimizer="sgd")
    return dict(name=request.param, forward=forward, shape=shape, folder=folder,
                training=onnx.load(folder / "training_model.onnx"))


def _module(family, training):
    path = family["folder"] / "probe_training.onnx"
    onnx.save(training, path)
    state = CheckpointState.load_checkpoint(str(family["folder"] / "checkpoint"))
    module = Module(str(path), state, str(family["folder"] / "eval_model.onnx"))
    module.train()
    return module


def _batch(rng, shape, n=3):
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


def _train(family, training, steps=5):
    module = _module(family, training)
    optimizer = Optimizer(str(family["folder"] / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(0.05)
    rng, losses = np.random.default_rng(0), []
    for _ in range(steps):
        losses.append(float(module(*_batch(rng, family["shape"]))))
        optimizer.step()
        module.lazy_reset_grad()
    return np.array(losses), module.get_contiguous_parameters().numpy()


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_full_selection_reproduces_exact_training(family):
    full, table = apply_lbp(family["training"], family["forward"], family["shape"], LbpConfig.parse("full"))
    assert sum(row["status"] == "rewritten" for row in table) >= 4
    exact_losses, exact_params = _train(family, family["training"])
    lbp_losses, lbp_params = _train(family, full)
    assert _rel(lbp_losses, exact_losses) < 1e-5
    assert _rel(lbp_params, exact_params) < 1e-5
    # and the low-rank selection does change training, so the comparison above can tell them apart
    low, _ = apply_lbp(family["training"], family["forward"], family["shape"], LbpConfig.parse("lp-tri:2"))
    assert _rel(_train(family, low)[1], exact_params) > 1e-5


def _as_tokens(a, kind):
    """Conv maps (B, C, H, W) -> tokens (B, H*W, C); token tensors pass through."""
    return a.reshape(a.shape[0], a.shape[1], -1).transpose(0, 2, 1) if kind == "conv" else a


def test_rewritten_gradients_equal_linear_backward(family):
    """ORT's gradient of every rewritten layer equals edge_lbp.core.wht.linear_backward on the same x and dy."""
    layers = {l.node: l for l in find_linear_layers(family["training"])}
    rewritten, table = apply_lbp(family["training"], family["forward"], family["shape"], LbpConfig.parse("lp-tri:4"))
    rows = [r for r in table if r["status"] == "rewritten"]
    probes = []
    for row in rows:
        layer = layers[row["node"]]
        probes += [layer.activation, layer.grad_output] + [o for o in layer.outputs if o]
    # ORT's Module does not return graph outputs named like gradients, hence the Identity renames.
    rewritten.graph.node.extend(helper.make_node("Identity", [n], [f"probe_{i}"]) for i, n in enumerate(probes))
    rewritten.graph.output.extend(onnx.ValueInfoProto(name=f"probe_{i}") for i in range(len(probes)))
    values = dict(zip(probes, _module(family, rewritten)(*_batch(np.random.default_rng(1), family["shape"]))[1:]))
    weights = {t.name: numpy_helper.to_array(t) for t in family["forward"].graph.initializer}
    for row in rows:
        layer = layers[row["node"]]
        w = weights[layer.weight].reshape(weights[layer.weight].shape[0], -1)  # (Co, Ci)
        x, dy = (_as_tokens(values[n], layer.kind) for n in (layer.activation, layer.grad_output))
        gx, gw, gb = linear_backward(x, dy, w, grid=row["grid"], extra_tokens=row["extra_tokens"],
                                     block=row["block"], selection=row["selection"])
        dx_name, dw_name = layer.outputs[0], layer.outputs[1]
        ort_dw = values[dw_name].reshape(w.shape) if layer.kind == "conv" else values[dw_name].T
        assert _rel(ort_dw, gw) < 1e-4, row["layer"]
        if dx_name:
            assert _rel(_as_tokens(values[dx_name], layer.kind), gx) < 1e-4, row["layer"]
        if layer.kind == "conv" and layer.outputs[2]:
            # Against the scale of the summed |dy|: a bias followed by BatchNorm has a gradient of about zero.
            scale = np.abs(dy).sum(axis=(0, 1)).max()
            np.testing.assert_allclose(values[layer.outputs[2]], gb, rtol=0, atol=1e-5 * scale, err_msg=row["layer"])


def test_no_backward_node_reads_the_full_activation(family):
    rewritten, table = apply_lbp(family["training"], family["forward"], family["shape"], LbpConfig.parse("lp-tri:4"))
    layers = {l.node: l for l in find_linear_layers(family["training"])}

    def backward_readers(model, tensor):
        return [n.name for n in model.graph.node if tensor in n.input
                and ("_Grad/" in n.name or n.op_type in (ops.MATMUL_GRAD, ops.CONV_GRAD))]

    for row in table:
        if row["status"] != "rewritten":
            continue
        x = layers[row["node"]].activation
        assert backward_readers(family["training"], x), f"{x} was not read by a backward node before the rewrite"
        assert backward_readers(rewritten, x) == [], row["layer"]
    assert all(o.domain != ops.DOMAIN or o.version == ops.OPSET for o in rewritten.opset_import)
    assert {f.name for f in rewritten.functions} >= {ops.PROJECT, ops.MATMUL_GRAD}
    onnx.checker.check_model(rewritten)


def test_impossible_grid_is_one_clear_error(family):
    with pytest.raises(ValueError, match=r"--grid 5x5 --extra-tokens 0 fits no linear layer \(their token counts"):
        apply_lbp(family["training"], family["forward"], family["shape"],
                  LbpConfig.parse(grid="5x5", extra_tokens=0))


def _tokens_layer():
    return LinearLayer("matmul", "mm", "x", "w", "wt", "dy", (), ("dx", "dw"))


@pytest.mark.parametrize("tokens, image, config, expected", [
    (197, (224, 224), LbpConfig(), ((14, 14), 1)),
    (66, (32, 32), LbpConfig(), ((8, 8), 2)),
    (16, (32, 32), LbpConfig(), ((4, 4), 0)),
    (197, (224, 224), LbpConfig(grid=(14, 14)), ((14, 14), 1)),
    (5, (4, 16), LbpConfig(), "ambiguous (1x4+1, 2x2+1)"),
    (5, (4, 16), LbpConfig(grid=(2, 2), extra_tokens=1), ((2, 2), 1)),
    (7, (32, 32), LbpConfig(), "7 tokens fit no grid of the 32x32 input"),
])
def test_token_grid_inference(tokens, image, config, expected):
    got = layer_geometry(_tokens_layer(), (1, tokens, 8), image, config)
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got and "--grid" in got
    else:
        assert got == expected


def test_lbp_spec_with_overrides():
    config = LbpConfig.parse("lp-tri:4,blocks.0.*=none,blocks.0.mlp.fc2.weight=full")
    assert config.spec_for("blocks.1.attn.qkv.weight") == "lp-tri:4"
    assert config.spec_for("blocks.0.attn.qkv.weight") == "none"
    assert config.spec_for("blocks.0.mlp.fc2.weight") == "full"
    with pytest.raises(ValueError, match="PATTERN=SPEC"):
        LbpConfig.parse("lp-tri:4,blocks.0.*")
    with pytest.raises(ValueError, match="unknown LBP selection"):
        LbpConfig.parse("lp-tri:4,blocks.0.*=lowpass")


def test_overrides_keep_layers_exact(family):
    model, table = apply_lbp(family["training"], family["forward"], family["shape"],
                             LbpConfig.parse("lp-tri:4,*fc2*=none"))
    fc2 = [r for r in table if "fc2" in r["layer"]]
    assert fc2 and all(r["status"] == "exact" and r["reason"] == "--lbp none" for r in fc2)
    assert any(r["status"] == "rewritten" for r in table)


def test_given_grid_does_not_invent_many_extra_tokens():
    # 65 tokens = 5x5 + 40: without --extra-tokens, only up to MAX_EXTRA_TOKENS leading tokens are assumed.
    got = layer_geometry(_tokens_layer(), (1, 65, 8), (32, 32), LbpConfig(grid=(5, 5)))
    assert got == ((8, 8), 1)
