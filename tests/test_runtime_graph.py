"""The executor's load-time checks and memory plan, the eval-graph pruning pass, and the artifact reader."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edge_lbp
from edge_lbp.core.artifact import Artifact, ArtifactError
from edge_lbp.runtime.graph import Graph, UnsupportedGraph
from edge_lbp.core.graphs import prune_to_outputs
from edge_lbp.runtime.registry import register
from edge_lbp.status import Stopped

F = onnx.TensorProto.FLOAT


@register("TestDouble", "edge_lbp.test")
def _double(attrs, node):
    factor = attrs.get("factor", 2.0)
    return lambda x: (x * factor,)


def _model(nodes, inputs=("x",), outputs=("y",), initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, F, None) for i in inputs],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _double_node(src, dst, name, **attrs):
    return helper.make_node("TestDouble", [src], [dst], name=name, domain="edge_lbp.test", **attrs)


def test_chain_runs_and_releases_intermediates_after_last_use():
    g = Graph(_model([_double_node("x", "a", "n0"), _double_node("a", "b", "n1", factor=3.0),
                      _double_node("b", "y", "n2")]))
    np.testing.assert_allclose(g.run({"x": np.ones(3, np.float32)})[0], 12.0)
    slot = g._slots
    assert g.steps[1].release == (slot["a"],)  # a dies once n1 has read it
    assert slot["y"] not in sum((s.release for s in g.steps), ())  # graph outputs are kept


@register("TestStoppedInKernel", "edge_lbp.test")
def _stopped_in_kernel(attrs, node):
    """What CPython raises when a stop signal's handler runs while a parallel Numba kernel returns its result: a
    SystemError per native layer, the stop at the bottom (the chain seen in tests/test_stop_signals.py's CI run)."""
    def run(x):
        if attrs.get("stop", 1):
            try:
                raise SystemError("numba parallel pool returned a result with an exception set") from Stopped(15)
            except SystemError as inner:
                raise SystemError("CPUDispatcher(kernel) returned a result with an exception set") from inner
        raise SystemError("a real failure") from ValueError("inside")
    return run


def test_a_stop_signal_inside_a_kernel_is_the_stop_not_a_failed_node():
    for stop, raised in ((1, Stopped), (0, RuntimeError)):
        node = helper.make_node("TestStoppedInKernel", ["x"], ["y"], name="n0", domain="edge_lbp.test", stop=stop)
        with pytest.raises(raised) as info:
            Graph(_model([node])).run({"x": np.ones(3, np.float32)})
        assert stop or "node n0 (TestStoppedInKernel) failed: SystemError: a real failure" in str(info.value)
    assert info.type is RuntimeError


def test_unread_output_is_released_by_its_producer():
    node = helper.make_node("TestDouble", ["x"], ["unused"], name="n0", domain="edge_lbp.test")
    g = Graph(_model([node, _double_node("x", "y", "n1")]))
    assert g._slots["unused"] in g.steps[0].release


def test_unsupported_ops_are_all_reported_at_load_time():
    nodes = [helper.make_node("Frobnicate", ["x"], ["a"], name="first"),
             helper.make_node("Frobnicate", ["a"], ["b"], name="second"),
             helper.make_node("Zap", ["b"], ["y"], name="third", domain="com.example")]
    with pytest.raises(UnsupportedGraph, match=r"no kernel for ai\.onnx::Frobnicate \(first, second\); "
                                               r"no kernel for com\.example::Zap \(third\)"):
        Graph(_model(nodes))


def test_opsets_the_kernels_do_not_implement_are_refused_at_load_time():
    relu = helper.make_node("Relu", ["x"], ["y"], name="r")
    for version in (13, 17, 18):
        model = _model([relu])
        model.opset_import[0].version = version
        Graph(model)
    old = _model([relu])
    old.opset_import[0].version = 11  # Squeeze/Unsqueeze/ReduceSum took axes as attributes then
    with pytest.raises(UnsupportedGraph, match=r"opset ai\.onnx 11 \(the kernels implement 13\.\.18\)"):
        Graph(old)
    unused = _model([relu])
    unused.opset_import.append(helper.make_opsetid("com.microsoft", 7))  # imported but used by no node: fine
    Graph(unused)


def test_unsupported_dtype_is_reported_at_load_time():
    weights = numpy_helper.from_array(np.ones(2, np.float16), "w")
    with pytest.raises(UnsupportedGraph, match="initializer 'w': dtype FLOAT16"):
        Graph(_model([_double_node("x", "y", "n0")], initializers=[weights]))


def test_missing_feed_is_named():
    g = Graph(_model([_double_node("x", "y", "n0")]))
    with pytest.raises(ValueError, match=r"missing inputs \['x'\]"):
        g.run({})


def test_prune_keeps_what_the_output_needs():
    nodes = [_double_node("x", "logits", "fwd"), helper.make_node("Add", ["logits", "labels"], ["loss"], name="loss")]
    pruned = prune_to_outputs(_model(nodes, inputs=("x", "labels"), outputs=("loss",)), ["logits"])
    assert [n.name for n in pruned.graph.node] == ["fwd"]
    assert [i.name for i in pruned.graph.input] == ["x"]
    assert [o.name for o in pruned.graph.output] == ["logits"]
    with pytest.raises(ValueError, match="no tensor named"):
        prune_to_outputs(pruned, ["nothing"])


def _fake_artifact(folder):
    """A manifest that passes the schema, over placeholder files (the reader checks bytes, not their meaning)."""
    import hashlib

    folder.mkdir()
    graphs = {"training": "t.onnx", "eval": "e.onnx", "optimizer": "o.onnx"}
    files = {"params.safetensors": b"not really", **{name: name.encode() for name in graphs.values()}}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    record = {"name": "x", "dtype": "float32", "shape": ["batch", 3]}
    manifest = {"schema_version": 1, "graphs": graphs, "params": "params.safetensors", "labels": "labels",
                "inputs": [record], "outputs": [{**record, "name": "logits"}], "trainable": [], "frozen": [],
                "checksums": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_artifact_reader_checks_manifest_and_checksums(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest"):
        edge_lbp.load(tmp_path)
    manifest = _fake_artifact(tmp_path / "a")
    assert Artifact.open(tmp_path / "a").manifest == manifest
    (tmp_path / "a" / "params.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"params\.safetensors: checksum mismatch"):
        Artifact.open(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema version 99"):
        Artifact.open(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Artifact.open(tmp_path / "a")


def test_artifact_reader_refuses_malformed_manifests_and_unlisted_files(tmp_path):
    manifest = _fake_artifact(tmp_path / "a")
    path = tmp_path / "a" / "manifest.json"
    for broken, message in [([], "a JSON list, not an object"), ({**manifest, "graphs": {}}, "names no training"),
                            ({**manifest, "inputs": []}, "'inputs' must list"),
                            ({**manifest, "trainable": "w"}, "'trainable' is a str"),
                            ({k: v for k, v in manifest.items() if k != "labels"}, "missing field 'labels'")]:
        path.write_text(json.dumps(broken))
        with pytest.raises(ArtifactError, match=message):
            Artifact.open(tmp_path / "a")
    path.write_text(json.dumps(manifest))
    (tmp_path / "a" / "extra.bin").write_bytes(b"?")
    with pytest.raises(ArtifactError, match="extra.bin: not covered by the manifest's checksums"):
        Artifact.open(tmp_path / "a")
    (tmp_path / "a" / "extra.bin").unlink()
    listed = {k: v for k, v in manifest["checksums"].items() if k != "params.safetensors"}
    path.write_text(json.dumps({**manifest, "checksums": listed}))  # a named file nobody vouches for
    with pytest.raises(ArtifactError, match="params.safetensors: not covered"):
        Artifact.open(tmp_path / "a")


def test_artifact_paths_cannot_leave_the_folder(tmp_path):
    manifest = _fake_artifact(tmp_path / "a")
    manifest["checksums"] = {"../outside": "0"}
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="leaves the artifact folder"):
        Artifact.open(tmp_path / "a")


def test_unknown_engine_is_refused_before_reading_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown engine 'tpu'; choose one of numba, ort"):
        edge_lbp.load(tmp_path / "does-not-exist", "tpu")


def test_one_thread_setting_for_numba_and_blas():
    import numba
    from threadpoolctl import threadpool_info

    from edge_lbp.core.config import set_threads

    try:
        assert set_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        with pytest.raises(ValueError, match="this machine allows 1 to"):
            set_threads(10_000)
    finally:
        set_threads(None)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def _gemm_transpose_model(extra_reader=False, trans_a=1, trans_b=0):
    nodes = [helper.make_node("Gemm", ["a", "b"], ["g"], name="gemm", transA=trans_a, transB=trans_b),
             helper.make_node("Transpose", ["g"], ["y"], name="t", perm=[1, 0])]
    outputs = ("y",)
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["g"], ["z"], name="neg"))
        outputs = ("y", "z")
    return _model(nodes, inputs=("a", "b"), outputs=outputs)


@pytest.mark.parametrize("trans_a, trans_b", [(1, 0), (0, 0), (0, 1), (1, 1)])
def test_transpose_of_gemm_is_folded_into_the_gemm(trans_a, trans_b):
    from edge_lbp.runtime.passes import fold_transpose_into_gemm

    model = _gemm_transpose_model(trans_a=trans_a, trans_b=trans_b)
    folded = fold_transpose_into_gemm(model)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3) if trans_a else (3, 5)).astype(np.float32)
    b = rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(np.float32)
    want = ((a.T if trans_a else a) @ (b.T if trans_b else b)).T
    got = Graph(folded).run({"a": a, "b": b})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.flags.c_contiguous


def test_gemm_with_another_reader_is_left_alone():
    from edge_lbp.runtime.passes import fold_transpose_into_gemm

    model = _gemm_transpose_model(extra_reader=True)
    assert fold_transpose_into_gemm(model) is model


def _gemm_accumulator_model(extra_reader=False, trans_a=1, trans_b=0, alpha=1.0):
    nodes = [helper.make_node("Gemm", ["a", "b"], ["g"], name="w_Grad/gemm", transA=trans_a, transB=trans_b,
                              alpha=alpha),
             helper.make_node("InPlaceAccumulatorV2", ["buffer", "g", "reset"], ["updated"], name="acc",
                              domain="com.microsoft")]
    outputs = ("updated",)
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["g"], ["z"], name="neg"))
        outputs = ("updated", "z")
    model = _model(nodes, inputs=("a", "b", "buffer", "reset"), outputs=outputs)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


@pytest.mark.parametrize("trans_a, trans_b, alpha", [(1, 0, 1.0), (0, 1, 1.0), (1, 1, 0.5), (0, 0, 2.0)])
def test_weight_gradient_gemm_writes_into_its_accumulation_buffer(trans_a, trans_b, alpha):
    """The fused node overwrites the buffer in place on a reset and adds to it otherwise, as the pair did."""
    from edge_lbp.runtime.passes import accumulate_in_place

    model = _gemm_accumulator_model(trans_a=trans_a, trans_b=trans_b, alpha=alpha)
    fused = accumulate_in_place(model)
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [("edge_lbp", "GemmAccumulate")]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3) if trans_a else (3, 5)).astype(np.float32)
    b = rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(np.float32)
    product = np.float32(alpha) * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    buffer = np.full((3, 4), 7.0, np.float32)
    graph, plain = Graph(fused), Graph(model)
    for reset, want in ((True, product), (False, 2 * product)):
        expected = plain.run({"a": a, "b": b, "buffer": buffer.copy(), "reset": np.array([reset])})
        updated = graph.run({"a": a, "b": b, "buffer": buffer, "reset": np.array([reset])})
        assert updated[0][0] and expected[0][0]
        np.testing.assert_allclose(buffer, want, rtol=1e-6, atol=1e-6)
    assert buffer.flags.c_contiguous


def test_gemm_read_elsewhere_is_not_fused_into_the_accumulator():
    from edge_lbp.runtime.passes import accumulate_in_place

    model = _gemm_accumulator_model(extra_reader=True)
    assert accumulate_in_place(model) is model


def test_sgd_optimizer_graph_asks_for_no_moments():
    """ORT's SGD optimizer graph declares first_order_moments and no node reads them: the engine neither asks
    for nor allocates them."""
    nodes = [helper.make_node("SGDOptimizerV2", ["lr", "params", "gradients"], ["done"], name="sgd",
                              domain="com.microsoft")]
    graph = helper.make_graph(nodes, "opt", [
        helper.make_tensor_value_info("lr", onnx.TensorProto.FLOAT, [1]),
        *[helper.make_tensor_sequence_value_info(n, onnx.TensorProto.FLOAT, None)
          for n in ("params", "gradients", "first_order_moments")]],
        [helper.make_tensor_value_info("done", onnx.TensorProto.BOOL, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    loaded = Graph(model)
    assert loaded.feeds == ["lr", "params", "gradients"]
    weight = np.ones(3, np.float32)
    loaded.run({"lr": np.array([0.5], np.float32), "params": [weight], "gradients": [np.ones(3, np.float32)]})
    np.testing.assert_array_equal(weight, np.full(3, 0.5, np.float32))


_KEPT = """
import numpy as np
{setup}
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
before = resident()
array = np.ones(16 << 20, np.float32)  # 64 MB, written
del array
print((resident() - before) >> 20)  # MB of it still resident after the free
"""
_GLIBC = pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _kept_after_free(setup, env=None):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _KEPT.format(setup=setup)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@_GLIBC
def test_the_numba_engine_keeps_freed_memory_for_the_next_step(tmp_path):
    """Once the numba engine is loaded, a freed 64 MB array stays in the process for the next allocation instead
    of going back to the system (glibc's default unmaps it, and the next step faults it in again: the control)."""
    from edge_lbp.core import packaged

    folder = packaged.assemble(tmp_path / "demo")
    assert _kept_after_free("") < 8
    load = f"import edge_lbp; edge_lbp.load({str(folder)!r}, 'numba')"
    assert _kept_after_free(load) >= 32  # (part of it may have come from heap memory already resident)
    assert _kept_after_free(load, env={"MALLOC_MMAP_MAX_": "65536"}) < 8  # the user's own setting wins
