"""Every gradient rule of our builder (``edge_lbp.core.gradients``) against central finite differences, with neither
torch nor onnxruntime: a tiny forward graph per rule written with onnx's helpers, exported as an ONNX file
(``gradients="own"``), one ``forward_backward`` on the numba engine, and each parameter gradient compared with the
finite differences of the same loss computed in float64 (onnx's reference evaluator on a float64 copy of the graph,
then the softmax cross-entropy averaged over the batch, as the builder's loss is). So it also runs on the emulated
board, where only the device requirements are installed."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import edge_lbp
from edge_lbp.core.gradients import registry

# In float64 a central difference's truncation (~STEP^2) and rounding (~1e-16 / STEP) errors are both far below
# RTOL; no kink (Relu, nearest Resize) lies within STEP of the points these seeds give.
BATCH, STEP, RTOL = 3, 1e-6, 1e-3
OPSET = 17


def n(op, inputs, output, **attrs):
    """A node named after its output; ``inputs`` space-separated ("h  scales": an empty input between)."""
    outputs = output.split(" ")
    return helper.make_node(op, inputs.split(" "), outputs, name=outputs[0], **attrs)


def c(name, value, dtype=np.int64):
    """A Constant node: what must not train (float initializers are parameters of the exported model)."""
    value = numpy_helper.from_array(np.array(value, dtype), name)
    return helper.make_node("Constant", [], [name], name=name, value=value)


def erf_gelu(x, out, dt):
    """GELU as torch writes it (erf form), which the builder fuses into com.microsoft::Gelu."""
    return [c("sqrt2", np.sqrt(2), dt), c("one", 1.0, dt), c("half", 0.5, dt), n("Div", f"{x} sqrt2", "g0"),
            n("Erf", "g0", "g1"), n("Add", "g1 one", "g2"), n("Mul", f"{x} g2", "g3"), n("Mul", "g3 half", out)]


def scaled(shape, params, nodes_of):
    """``h = x * a`` (``a``: the input's last two axes), then the case's nodes (``nodes_of(dt)``) to ``logits``."""
    return shape, {"a": shape[1:], **params}, lambda dt: [n("Mul", "x a", "h"), *nodes_of(dt)]


FLAT = n("Flatten", "y", "logits")
# case -> (input shape (C, H, W), parameters {name: shape} (``pos...``: positive), nodes_of(float dtype)). The case
# is named after the rule it checks (the op the builder's forward has, after its rewrites).
CASES = {
    # A weight under a batched operand (one Gemm over the rows) and the activation's gradient summed over the batch.
    "MatMul": scaled((1, 2, 3), {"w": (3, 2)}, lambda dt: [n("MatMul", "h w", "y"), FLAT]),
    "MatMul/2-D": scaled((1, 2, 3), {"w": (6, 4)}, lambda dt: [n("Flatten", "h", "f"), n("MatMul", "f w", "logits")]),
    # The weight first, under the batched operand.
    "MatMul/weight first": scaled((1, 2, 3), {"w": (2, 2)}, lambda dt: [n("MatMul", "w h", "y"), FLAT]),
    "MatMul/batched": scaled((1, 2, 3), {"b": (3,)}, lambda dt: [
        n("Mul", "x b", "k"), n("Transpose", "k", "kt", perm=[0, 1, 3, 2]), n("MatMul", "h kt", "y"), FLAT]),
    "Gemm": scaled((1, 2, 3), {"w": (6, 4), "b": (4,)}, lambda dt: [
        n("Flatten", "h", "f"), n("Gemm", "f w b", "logits", alpha=0.5, beta=2.0)]),
    "Gemm/transposed": scaled((1, 2, 3), {"w": (4, 6), "b": (1, 4)}, lambda dt: [
        n("Flatten", "h", "f"), n("Transpose", "f", "ft"),
        n("Gemm", "ft w b", "logits", transA=1, transB=1, alpha=0.7)]),
    "Add": scaled((1, 2, 3), {"b": (2, 1)}, lambda dt: [n("Add", "h b", "y"), FLAT]),
    "Sub": scaled((1, 2, 3), {"b": (3,)}, lambda dt: [n("Sub", "b h", "y"), FLAT]),
    "Mul": scaled((1, 2, 3), {"b": (1, 2, 1)}, lambda dt: [n("Mul", "h b", "y"), FLAT]),
    "Div": scaled((1, 2, 3), {"pos": (2, 1)}, lambda dt: [n("Div", "h pos", "y"), FLAT]),
    "Pow": scaled((1, 2, 3), {"pos": (3,)}, lambda dt: [n("Pow", "pos h", "y"), FLAT]),
    "Pow/integer exponent": scaled((1, 2, 3), {}, lambda dt: [c("three", 3), n("Pow", "h three", "y"), FLAT]),
    "Sqrt": scaled((1, 2, 3), {"pos": (3,)}, lambda dt: [
        n("Mul", "h h", "s"), n("Add", "s pos", "t"), n("Sqrt", "t", "y"), FLAT]),
    **{op: scaled((1, 2, 3), {}, lambda dt, op=op: [n(op, "h", "y"), FLAT])
       for op in ("Neg", "Relu", "Tanh", "Exp", "Erf", "Identity")},
    "Gelu": scaled((1, 2, 3), {}, lambda dt: [*erf_gelu("h", "y", dt), FLAT]),
    # A bias vector added before the GELU: fused into com.microsoft::BiasGelu.
    "BiasGelu": scaled((1, 2, 3), {"b": (3,)}, lambda dt: [n("Add", "h b", "s"), *erf_gelu("s", "y", dt), FLAT]),
    # A Dropout that cannot drop stays when it writes the logits: its rule passes the gradient through. (One that
    # drops is left out: its gradient reads the mask the engine drew; tests/test_gradients.py checks that.)
    "Dropout": scaled((1, 2, 3), {}, lambda dt: [n("Flatten", "h", "f"), n("Dropout", "f", "logits")]),
    "Cast": scaled((1, 2, 3), {}, lambda dt: [
        n("Cast", "h", "d", to=TensorProto.DOUBLE),
        n("Cast", "d", "y", to=helper.np_dtype_to_tensor_dtype(np.dtype(dt))), FLAT]),
    "Where": scaled((1, 2, 3), {"b": (3,)}, lambda dt: [
        c("m", [[True, False, False], [False, True, True]], bool), n("Where", "m h b", "y"), FLAT]),
    "Softmax": scaled((1, 2, 3), {}, lambda dt: [n("Softmax", "h", "y", axis=2), FLAT]),
    "LayerNormalization": scaled((1, 2, 3), {"scale": (2, 3), "bias": (2, 3)}, lambda dt: [
        n("LayerNormalization", "h scale bias", "y", axis=2), FLAT]),
    # Training mode: the batch statistics (the per-position scale ``a`` is not cancelled by them).
    "BatchNormInternal": scaled((2, 2, 2), {"scale": (2,), "bias": (2,)}, lambda dt: [
        c("mean", [0.0, 0.0], dt), c("var", [1.0, 1.0], dt),
        n("BatchNormalization", "h scale bias mean var", "y", training_mode=1), FLAT]),
    "Reshape": scaled((1, 2, 3), {}, lambda dt: [c("shape", [-1, 6]), n("Reshape", "h shape", "logits")]),
    "Flatten": scaled((1, 2, 3), {}, lambda dt: [n("Flatten", "h", "logits")]),
    "Squeeze": scaled((1, 2, 3), {}, lambda dt: [c("axes", [1]), n("Squeeze", "h axes", "y"), FLAT]),
    "Unsqueeze": scaled((1, 2, 3), {}, lambda dt: [c("axes", [2]), n("Unsqueeze", "h axes", "y"), FLAT]),
    "Transpose": scaled((1, 2, 3), {}, lambda dt: [n("Transpose", "h", "y", perm=[0, 3, 1, 2]), FLAT]),
    "Concat": scaled((1, 2, 3), {"b": (3,)}, lambda dt: [n("Mul", "x b", "k"), n("Concat", "h k", "y", axis=2),
                                                         FLAT]),
    # An input that needs no gradient (it depends on the input alone).
    "Concat/with constant": scaled((1, 2, 3), {}, lambda dt: [
        c("half", 0.5, dt), n("Mul", "x half", "k"), n("Concat", "h k", "y", axis=2), FLAT]),
    # A class token expanded to the batch and concatenated (the inputs' lengths along the axis read at run time).
    "Concat/expanded token": scaled((1, 2, 3), {"cls": (1, 1, 1, 3)}, lambda dt: [
        n("Shape", "x", "batch", end=1), c("rest", [1, 1, 3]), n("Concat", "batch rest", "shape", axis=0),
        n("Expand", "cls shape", "e"), n("Concat", "e h", "y", axis=2), FLAT]),
    "Split": scaled((1, 2, 4), {}, lambda dt: [
        c("sizes", [1, 3]), n("Split", "h sizes", "s0 s1", axis=-1), n("Mul", "s0 s1", "y"), FLAT]),
    # Equal parts (no sizes input).
    "Split/equal": scaled((1, 2, 4), {}, lambda dt: [n("Split", "h", "s0 s1", axis=3), n("Mul", "s0 s1", "y"), FLAT]),
    "Slice": scaled((1, 3, 4), {}, lambda dt: [
        c("starts", [1, 0]), c("ends", [3, 4]), c("axes", [2, 3]), c("steps", [1, 2]),
        n("Slice", "h starts ends axes steps", "y"), FLAT]),
    "Slice/negative step": scaled((1, 3, 4), {}, lambda dt: [
        c("starts", [-1]), c("ends", [-5]), c("axes", [3]), c("steps", [-2]),
        n("Slice", "h starts ends axes steps", "y"), FLAT]),
    # torch.flip's bounds: from the last element to before the first (the smallest int64).
    "Slice/flip": scaled((1, 3, 4), {}, lambda dt: [
        c("starts", [-1]), c("ends", [np.iinfo(np.int64).min]), c("axes", [3]), c("steps", [-1]),
        n("Slice", "h starts ends axes steps", "y"), FLAT]),
    # Bounds as torch writes an open end (the largest int64), axes and steps left out.
    "Slice/open end": scaled((1, 3, 4), {}, lambda dt: [
        c("starts", [0, 0, 1, 2]), c("ends", [np.iinfo(np.int64).max] * 4), n("Slice", "h starts ends", "y"), FLAT]),
    # A repeated index (its gradients add up) and one from the end.
    "Gather": scaled((1, 2, 3), {}, lambda dt: [c("index", [0, 2, 0, -1]), n("Gather", "h index", "y", axis=3),
                                                FLAT]),
    # Rows of a parameter (an embedding table): the gradient is scattered back to the rows.
    "Gather/embedding": scaled((1, 2, 3), {"table": (4, 3)}, lambda dt: [
        c("index", [[0, 1], [3, 0]]), n("Gather", "table index", "e"), n("Add", "h e", "y"), FLAT]),
    # A scalar index drops the axis (torch's x[:, 0]).
    "Gather/scalar": scaled((1, 2, 3), {}, lambda dt: [c("index", 1), n("Gather", "h index", "y", axis=2), FLAT]),
    # Expanded to the batch, whose size is read at run time.
    "Expand": scaled((1, 2, 3), {"b": (2, 1)}, lambda dt: [
        n("Shape", "x", "shape"), n("Expand", "b shape", "e"), n("Mul", "e h", "y"), FLAT]),
    "ReduceMean": scaled((1, 2, 3), {}, lambda dt: [n("ReduceMean", "h", "y", axes=[2], keepdims=0), FLAT]),
    # Over the batch, whose size only the run time knows: the count is computed from the sizes there.
    "ReduceMean/over the batch": scaled((1, 2, 3), {}, lambda dt: [
        n("ReduceMean", "h", "m", axes=[0]), n("Mul", "h m", "y"), FLAT]),
    "ReduceSum": scaled((1, 2, 3), {}, lambda dt: [c("axes", [-1]), n("ReduceSum", "h axes", "y"), FLAT]),
    "ReduceSum/axes dropped": scaled((2, 2, 3), {}, lambda dt: [
        c("axes", [-1, 1]), n("ReduceSum", "h axes", "y", keepdims=0), FLAT]),
    "GlobalAveragePool": scaled((2, 2, 3), {}, lambda dt: [n("GlobalAveragePool", "h", "y"), FLAT]),
    "Pad": scaled((1, 2, 3), {}, lambda dt: [
        c("pads", [0, 0, 1, 0, 0, 0, 0, 2]), c("value", 0.5, dt), n("Pad", "h pads value", "y"), FLAT]),
    "Conv": scaled((2, 3, 3), {"w": (2, 2, 2, 2), "b": (2,)}, lambda dt: [
        n("Conv", "h w b", "y", pads=[1, 0, 0, 1], strides=[2, 1]), FLAT]),
    "Conv/grouped": scaled((2, 3, 3), {"w": (4, 1, 2, 2)}, lambda dt: [
        n("Conv", "h w", "y", group=2, dilations=[1, 2], pads=[0, 1, 0, 1]), FLAT]),
    **{f"Resize/{mode}": scaled((1, 3, 4), {}, lambda dt, mode=mode: [
        c("scales", [1, 1, 2, 1.5], np.float32), n("Resize", "h  scales", "y", mode=mode, **attrs), FLAT])
       for mode, attrs in (("linear", {}), ("cubic", {"coordinate_transformation_mode": "pytorch_half_pixel"}),
                           ("nearest", {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}))},
    # Sizes instead of scales, the batch's read at run time ("h   sizes": no roi, no scales).
    "Resize/sizes": scaled((1, 3, 4), {}, lambda dt: [
        n("Shape", "x", "lead", end=2), c("hw", [5, 3]), n("Concat", "lead hw", "sizes", axis=0),
        n("Resize", "h   sizes", "y", mode="linear", coordinate_transformation_mode="align_corners"), FLAT]),
}


class Erf(OpRun):  # (the reference evaluator takes the op type from the class name)
    """The reference's Erf in full float64: without SciPy, onnx >= 1.18 approximates it (errors of 2e-8, which
    central differences of step 1e-6 turn into 1 % errors of the derivative)."""
    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


def _model(shape, params, nodes_of, dt, values=None, classes=None):
    """The forward model in ``dt``: the parameters are initializers holding ``values``, or inputs (``values`` None:
    the finite differences feed them)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    inputs = [helper.make_tensor_value_info("x", elem, ["batch", *shape])]
    if values is None:
        inputs += [helper.make_tensor_value_info(k, elem, s) for k, s in params.items()]
    initializers = [numpy_helper.from_array(values[k].astype(dt), k) for k in params] if values is not None else []
    logits = helper.make_tensor_value_info("logits", elem, classes and ["batch", classes])
    graph = helper.make_graph(nodes_of(dt), "rule", inputs, [logits], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def _cross_entropy(logits, labels):
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def _finite_differences(loss, values):
    """Central differences of ``loss(values)`` along every element of every parameter (float64)."""
    grads = {}
    for k, v in values.items():
        grads[k] = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            moved = []
            for step in (STEP, -STEP):
                w = v.copy()
                w[i] += step
                moved.append(loss({**values, k: w}))
            grads[k][i] = (moved[0] - moved[1]) / (2 * STEP)
    return grads


def _gradients(case, tmp_path):
    """The engine's gradients of ``case`` and their finite differences."""
    shape, params, nodes_of = CASES[case]
    rng = np.random.default_rng(0)
    values = {k: (rng.uniform(0.5, 1.5, s) * (1 if k.startswith("pos") else rng.choice([-1, 1], s)))
              .astype(np.float32) for k, s in params.items()}
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    reference = ReferenceEvaluator(_model(shape, params, nodes_of, np.float64), new_ops=[Erf])
    x64, start = x.astype(np.float64), {k: v.astype(np.float64) for k, v in values.items()}
    classes = reference.run(None, {"x": x64, **start})[0].shape[1]
    labels = rng.integers(0, classes, BATCH)

    def loss(point):
        return _cross_entropy(reference.run(None, {"x": x64, **point})[0], labels)

    onnx.save(_model(shape, params, nodes_of, np.float32, values, classes), tmp_path / "model.onnx")
    edge_lbp.export_model(str(tmp_path / "model.onnx"), tmp_path / "art", lbp="none", optimizer="sgd",
                          gradients="own")
    # The rule under test is reached: its op is among the forward nodes (those before the loss) after the
    # builder's rewrites; the backward nodes of other rules may have the same op.
    ops = [node.op_type for node in onnx.load(tmp_path / "art" / "training_model.onnx").graph.node]
    assert case.split("/")[0] in ops[:ops.index("SoftmaxCrossEntropyLoss")]
    session = edge_lbp.load(tmp_path / "art", "numba")
    np.testing.assert_allclose(session.forward_backward(x, labels), loss(start), rtol=1e-5)
    return {k: g.copy() for k, g in session.gradients().items()}, _finite_differences(loss, start)


def _assert_close(grads, reference):
    """Each element within RTOL of the parameter's largest gradient entry: float32 rounds relative to that, so an
    element near 0 cannot be held to its own size."""
    assert grads.keys() == reference.keys()
    for k, ref in reference.items():
        np.testing.assert_allclose(grads[k], ref, rtol=RTOL, atol=RTOL * np.abs(ref).max(), err_msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_rule_matches_finite_differences(case, tmp_path):
    _assert_close(*_gradients(case, tmp_path))


@pytest.mark.parametrize("wrong", [lambda g: g * 1.01, lambda g: -g], ids=["scaled by 1.01", "sign flipped"])
def test_a_wrong_gradient_fails_the_comparison(wrong, tmp_path):
    grads, reference = _gradients("MatMul", tmp_path)
    _assert_close(grads, reference)
    with pytest.raises(AssertionError):
        _assert_close({**grads, "w": wrong(grads["w"])}, reference)


def test_every_rule_has_a_case():
    """A rule added to the registry needs a case here."""
    assert {case.split("/")[0] for case in CASES} == registry.ruled_ops()
