"""Fused attention (``runtime.attention_pass``, ``runtime.kernels.attention``): the fused nodes against ONNX
Runtime and this engine running the unfused graph, the pass leaving what it must not match alone, and every
exported family trained with and without the pass."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_lbp
from edge_lbp.core import ops, ort_names
from edge_lbp.runtime import attention_pass, passes
from edge_lbp.runtime.graph import Graph
from engine_check import ZERO_GRADIENT, compare_engines, exceeded
from ort_node import run_model

MS = ops.MICROSOFT
F = onnx.TensorProto.FLOAT


def _graph(scale="div", heads=True, extra_output=None, bias=False, alpha=1.0, backward=True):
    """ORT's attention and its gradient as its builder writes them: q, k, v, dout -> out, dq, dkt, dv.
    ``scale``: "div" (a Div of the scores by a constant, as torchvision's MHA), "mul" (a Mul, constant first),
    or None; ``bias``: an additive bias before the softmax (Swin's); ``alpha``: the dq product's alpha."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2] if heads else [0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"])]
    scores = "s"
    if scale == "div":
        nodes.append(helper.make_node("Div", ["s", "c"], ["s2"]))
        scores = "s2"
    elif scale == "mul":
        nodes.append(helper.make_node("Mul", ["c", "s"], ["s2"]))
        scores = "s2"
    if bias:
        nodes.append(helper.make_node("Add", [scores, "bias"], ["s3"]))
        scores = "s3"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["out"])]
    outputs = ["out"]
    if backward:
        nodes += [helper.make_node("FusedMatMul", ["p", "dout"], ["dv"], domain=MS, transA=1),
                  helper.make_node("FusedMatMul", ["dout", "v"], ["dp"], domain=MS, transB=1),
                  helper.make_node("SoftmaxGrad_13", ["dp", "p"], ["ds2"], domain=MS, axis=-1)]
        if scale is not None:
            nodes += [helper.make_node("Div" if scale == "div" else "Mul", ["ds2", "c"], ["ds1"]),
                      helper.make_node("Identity", ["ds1"], ["ds"])]
        ds = "ds" if scale is not None else "ds2"
        nodes += [helper.make_node("FusedMatMul", [ds, "kt"], ["dq"], domain=MS, transB=1, alpha=alpha),
                  helper.make_node("FusedMatMul", ["q", ds], ["dkt"], domain=MS, transA=1)]
        outputs += ["dq", "dkt", "dv"]
    outputs += [extra_output] if extra_output else []
    inputs = ["q", "k", "v", "dout"] + (["bias"] if bias else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, F, None) for i in inputs],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs],
                              [numpy_helper.from_array(np.array(8.0, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             ir_version=8)


def _feeds(shape, tokens, seed=0):
    rng = np.random.default_rng(seed)
    rand = lambda *s: (2 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    *lead, n, d = shape
    return {"q": rand(*shape), "k": rand(*lead, tokens, d), "v": rand(*lead, tokens, d), "dout": rand(*shape)}


def _strided(feeds):
    """q as the heads of a (B, N, H, d) tensor, k and v as those of one (B, M, 2, H, d) tensor: views, as the
    projections' outputs give them."""
    heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    packed = np.stack([heads(feeds["k"]), heads(feeds["v"])], axis=2)
    return {**feeds, "q": heads(np.ascontiguousarray(heads(feeds["q"]))), "k": heads(packed[:, :, 0]),
            "v": heads(packed[:, :, 1])}


@pytest.mark.parametrize("scale", ["div", "mul", None])
@pytest.mark.parametrize("shape, tokens", [((2, 3, 9, 8), 9), ((1, 2, 37, 16), 37), ((2, 2, 6, 5), 11),
                                          ((1, 1, 70, 40), 45)], ids=["small", "odd-tokens", "cross", "panels"])
def test_fused_nodes_match_ort_and_the_unfused_graph(scale, shape, tokens):
    """Token counts and head sizes not a multiple of the register panels (6 rows x 16 or 32 lanes), several
    panels each way ("panels"), and keys of another length than queries."""
    model = _graph(scale)
    fused = attention_pass.fuse_attention(model)
    assert [n.op_type for n in fused.graph.node] == ["Transpose", ops.ATTENTION, ops.ATTENTION_GRAD]
    feeds = _feeds(shape, tokens)
    got = Graph(fused).run(feeds)
    for g, plain, want in zip(got, Graph(model).run(feeds), run_model(model, feeds)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(g, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    for g, strided in zip(got, Graph(fused).run(_strided(feeds))):
        np.testing.assert_array_equal(g, strided)


def test_three_dimensional_operands_fuse():
    model = _graph("div", heads=False)
    fused = attention_pass.fuse_attention(model)
    assert ops.ATTENTION_GRAD in [n.op_type for n in fused.graph.node]
    feeds = _feeds((3, 10, 4), 10)
    for g, want in zip(Graph(fused).run(feeds), run_model(model, feeds)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_forward_only_graph_fuses_the_forward():
    model = _graph("div", backward=False)
    fused = attention_pass.fuse_attention(model)
    assert [n.op_type for n in fused.graph.node] == ["Transpose", ops.ATTENTION]
    feeds = _feeds((2, 2, 7, 4), 7)
    np.testing.assert_allclose(Graph(fused).run(feeds)[0], run_model(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", [_graph(bias=True), _graph(extra_output="p"), _graph(extra_output="s2"),
                                   _graph(alpha=0.5)],
                         ids=["bias-before-softmax", "probabilities-read", "scores-read", "other-gradient"])
def test_pass_leaves_other_graphs_alone(model):
    assert attention_pass.fuse_attention(model) is model


def _export(tmp_path, family, lbp="none"):
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
    if family.startswith("hf-"):
        from test_export_hf import build

        source = build(family[3:])
    elif family == "mha":
        from factory_models import mha_vit

        source = mha_vit()
    else:
        source = family.removesuffix(":own")
    options = {**(dict(gradients="own") if family.endswith(":own") else {}),
               **(dict(input_shape=(3, 32, 32)) if family == "mha" else {})}
    edge_lbp.export_model(source, tmp_path, lbp=lbp, optimizer="sgd", lr=0.05,
                          **options)
    return onnx.load(str(tmp_path / "training_model.onnx"))


def _steps(folder, classes, steps=3):
    session = edge_lbp.load(folder, "numba", threads=1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
        loss = session.train_step(x, rng.integers(0, classes, 3))
        out.append((loss, {k: v.copy() for k, v in session.gradients().items()}))
    return session, out


FUSED = ["vit-tiny", "deit-tiny", "vit-tiny:own", "hf-vit", "hf-deit-distilled", "mha"]


@pytest.mark.parametrize("family, lbp", [(f, "none") for f in FUSED] + [("vit-tiny", "lp-tri:4")])
def test_family_trains_as_the_unfused_graph(tmp_path, monkeypatch, family, lbp):
    """Every attention of the family fused (forward and gradient), losses and gradients of 3 SGD steps equal to
    the unfused graph's to 1e-5, and the numba engine still ORT's to 1e-4 (``engine_check.LIMITS``); with LBP the
    rewritten layers' kernels run beside the fused attention."""
    model = _export(tmp_path, family, lbp)
    attentions = sum(n.op_type == "Softmax" for n in model.graph.node)
    classes = 5 if family.startswith("hf-") else 10
    fused_session, fused = _steps(tmp_path, classes)
    kinds = [s.op_type for s in fused_session.training.steps]
    assert attentions and kinds.count(ops.ATTENTION) == kinds.count(ops.ATTENTION_GRAD) == attentions
    assert "Softmax" not in kinds and "SoftmaxGrad_13" not in kinds
    phases = {(s.op_type, ort_names.backward_phase(s.name, s.op_type)) for s in fused_session.training.steps}
    assert {(ops.ATTENTION, "forward"), (ops.ATTENTION_GRAD, "backward")} <= phases  # as the profiler splits a step
    assert (ops.ATTENTION_GRAD, "forward") not in phases and (ops.ATTENTION, "backward") not in phases
    if lbp != "none":
        assert ops.MATMUL_GRAD_ACCUMULATE in kinds
    assert kinds.count(ops.TRANSPOSE_VIEW) >= attentions  # at least the transpose of the output's gradient
    monkeypatch.setattr(passes, "fuse_attention", lambda m: m)
    plain_session, plain = _steps(tmp_path, classes)
    assert not {ops.ATTENTION, ops.TRANSPOSE_VIEW, ops.SPLIT_VIEW} & {s.op_type for s in plain_session.training.steps}
    for (loss, grads), (want_loss, want_grads) in zip(fused, plain):
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
        largest = max(np.abs(g).max() for g in want_grads.values())
        for name, grad in grads.items():
            want = want_grads[name]
            # An exactly-zero gradient is rounding noise in both graphs: bounded against the step's largest.
            scale = largest if name.endswith(ZERO_GRADIENT) else np.abs(want).max()
            np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    monkeypatch.undo()
    measured = compare_engines(tmp_path, (3, 32, 32), classes)
    assert not exceeded(measured), measured


def _packed_heads(extra_readers):
    """q, k, v as the heads of a packed (B, N, 3, H, d) tensor, as the exported ViTs take them, into Attention."""
    nodes = [helper.make_node("Transpose", ["qkv"], ["heads"], perm=[2, 0, 3, 1, 4]),
             helper.make_node("Split", ["heads"], ["q3", "k3", "v3"], axis=0, num_outputs=3),
             *[helper.make_node("Squeeze", [f"{t}3", "zero"], [t]) for t in "qkv"],
             helper.make_node("Shape", ["q3"], ["q_shape"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("Attention", ["q", "kt", "v"], ["out", "mx", "sm"], domain=ops.DOMAIN),
             helper.make_node("AttentionGrad", ["out", "q", "kt", "v", "mx", "sm"], ["dq", "dkt", "dv"],
                              domain=ops.DOMAIN),
             *extra_readers]
    outputs = ["out", "dq", "dkt", "dv"] + [n.output[0] for n in extra_readers]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [2, 5, 3, 2, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.array([0], np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ops.DOMAIN, 1)])


@pytest.mark.parametrize("extra, views", [
    ([], [("heads", ops.TRANSPOSE_VIEW), ("q3", ops.SPLIT_VIEW), ("kt", ops.TRANSPOSE_VIEW)]),
    # v also transposed for a MatMul, q transposed into a graph output: their copies stay, and so do the split
    # and the transpose that feed them; k's transpose, read by the attention only, is still a view
    ([helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 1, 3, 2]),
      helper.make_node("MatMul", ["vt", "out"], ["o2"]),
      helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2])], [("kt", ops.TRANSPOSE_VIEW)]),
], ids=["attention-only", "other-readers"])
def test_views_replace_only_copies_that_reach_the_fused_attention(extra, views):
    """Transpose and Split become views where only the attention reads what they make (a Shape may read it too),
    in a training graph (with AttentionGrad); a forward-only graph keeps its copies."""
    model = _packed_heads(extra)
    viewed = passes.views_into_attention(model)
    forward_only = _packed_heads(extra)
    forward_only.graph.node.remove(next(n for n in forward_only.graph.node if n.op_type == ops.ATTENTION_GRAD))
    assert passes.views_into_attention(forward_only) is forward_only
    assert [(n.output[0], n.op_type) for n in viewed.graph.node if n.domain == ops.DOMAIN
            and n.op_type in (ops.TRANSPOSE_VIEW, ops.SPLIT_VIEW)] == views
    x = np.random.default_rng(0).standard_normal((2, 5, 3, 2, 4)).astype(np.float32)
    for got, want in zip(Graph(viewed).run({"qkv": x}), Graph(model).run({"qkv": x})):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", ["swin-tiny", "hf-swin"])
def test_swin_attention_with_its_bias_stays_unfused(tmp_path, family):
    """Swin adds its relative-position bias (and the shifted windows' mask) to the scores: not matched yet."""
    model = _export(tmp_path, family)
    assert attention_pass.fuse_attention(model) is model
