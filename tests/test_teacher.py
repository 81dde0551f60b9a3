"""The teacher on the device (issue 27): an ONNX classifier run forward by the engine on the student's batches,
fed as its metadata says, against onnx's reference evaluator on the teacher's own preprocessing of the same
pixels."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edge_lbp.data import normalize
from edge_lbp.teacher import Teacher, _feeder
from test_data import manifest

STUDENT = manifest(size=16, classes=5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_range=(0.0, 1.0))
TEACHER_NORM = {"mean": [0.1, 0.2, 0.3], "std": [0.9, 0.8, 0.7], "input_range": [-1.0, 1.0]}


def _cnn(classes=5, described=True, size=16, outputs=1):
    """A ResNet-like stem and head: Conv, BatchNormalization, Relu, MaxPool 3x3/2, GlobalAveragePool, Gemm."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["p"], ["avg"]),
             helper.make_node("Flatten", ["avg"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1)]
    inits = [init("w", 8, 3, 3, 3), init("b", 8), init("g", 8), init("beta", 8), init("mu", 8),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
             init("fc", classes, 8), init("fc_b", classes)]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["n", 8]))
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])
    graph = helper.make_graph(nodes, "teacher", [image], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if described:
        meta = {"edge_lbp.preprocessing": "outside", "edge_lbp.input_size": json.dumps([size, size]),
                **{f"edge_lbp.{k}": json.dumps(v) for k, v in TEACHER_NORM.items()}}
        helper.set_model_props(model, meta)
    return model


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _images(n=6, size=16):
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_teacher_sees_the_students_images_with_its_own_preprocessing(tmp_path):
    model = _cnn()
    teacher = Teacher(_save(model, tmp_path / "t.onnx"), STUDENT)
    images = _images()
    x = normalize(images, **{k: STUDENT["normalization"][k] for k in ("mean", "std", "input_range")})
    want = ReferenceEvaluator(model).run(None, {"x": normalize(images, **TEACHER_NORM)})[0]
    got = teacher.logits(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert teacher.described
    np.testing.assert_array_equal(teacher.labels(x), want.argmax(axis=1))
    for temperature in (1.0, 4.0):
        z = np.exp(want.astype(np.float64) / temperature)
        np.testing.assert_allclose(teacher.probabilities(x, temperature), z / z.sum(axis=1, keepdims=True),
                                   rtol=1e-4, atol=1e-6)


def test_a_teacher_without_metadata_gets_the_students_batch_as_it_is(tmp_path):
    model = _cnn(described=False)
    teacher = Teacher(_save(model, tmp_path / "t.onnx"), STUDENT)
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(teacher.logits(x), ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-4,
                               atol=1e-5)
    assert not teacher.described


def test_a_teacher_with_preprocessing_in_its_graph_gets_the_pixels_back():
    meta = {"edge_lbp.preprocessing": "in-graph", "edge_lbp.input_size": "[16, 16]",
            **{f"edge_lbp.{k}": json.dumps(v) for k, v in TEACHER_NORM.items()}}
    feed = _feeder("t.onnx", meta, [None, 3, 16, 16], STUDENT["normalization"])
    images = _images()
    got = feed(normalize(images, **STUDENT["normalization"]))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("change, match", [
    (lambda m: _cnn(outputs=2), "one output"),
    (lambda m: _cnn(classes=7), r"returned \(2, 7\).*5 classes"),
    (lambda m: _cnn(size=24), "takes 24 x 24 images, the student 16 x 16"),
])
def test_teachers_that_do_not_fit_are_one_line(tmp_path, change, match):
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=match):
        Teacher(_save(change(None), tmp_path / "t.onnx"), STUDENT).logits(x)


def test_an_op_without_a_kernel_and_a_file_that_is_no_model_are_one_line(tmp_path):
    model = _cnn()
    model.graph.node[2].op_type = "LRN"
    with pytest.raises(ValueError, match=r"no kernel for ai.onnx::LRN"):
        Teacher(_save(model, tmp_path / "t.onnx"), STUDENT)
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        Teacher(tmp_path / "junk.onnx", STUDENT)


def test_a_students_own_inference_model_teaches_what_the_student_predicts(tmp_path):
    """The committed tiny ViT artifact's inference model (with its metadata, as --export-onnx writes it) as the
    teacher: its logits on a batch are the student's evaluation of that batch."""
    from pathlib import Path

    from edge_lbp import Trainer

    trainer = Trainer(Path(__file__).parent / "fixtures" / "tiny_vit", threads=1)
    path = trainer.export_inference(tmp_path / "teacher.onnx")
    teacher = Teacher(path, trainer.manifest)
    shape = [2 if d == "batch" else d for d in trainer.manifest["inputs"][0]["shape"]]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert teacher.described
    np.testing.assert_allclose(teacher.logits(x), trainer.session.eval_step(x), rtol=1e-5, atol=1e-6)
