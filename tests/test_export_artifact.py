"""The artifact folder: every family x LBP spec x trainable set exports, validates, and trains one ORT step."""
import json
import shutil

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from edge_lbp.core import ops  # noqa: E402
from edge_lbp.core import artifact  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402

FAMILIES = ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]
LBP = ["none", "full", "lp-tri:4"]
TRAIN = {"vit-tiny": ["all", "last:1", "bias", "head"]}
CASES = [(f, lbp, t) for f in FAMILIES for lbp in LBP for t in TRAIN.get(f, ["all", "bias", "head"])]


def check_artifact(folder):
    """Validate a folder as the device will see it, then train one ORT step on it; returns the manifest."""
    manifest = artifact.verify_artifact(folder)
    trainable, frozen = manifest["trainable"], manifest["frozen"]
    params = load_file(folder / manifest["params"])
    assert sorted(params) == sorted(trainable + frozen) and not set(trainable) & set(frozen)
    assert all(v.dtype == np.float32 for v in params.values())
    graphs = {key: onnx.load(folder / rel) for key, rel in manifest["graphs"].items()}
    for graph in graphs.values():
        onnx.checker.check_model(graph)
    lbp_ops = [n.op_type for n in graphs["training"].graph.node if n.domain == ops.DOMAIN]
    rewritten = [r for r in manifest["lbp"]["layers"] if r["status"] == "rewritten"]
    assert sum(op in (ops.MATMUL_GRAD, ops.CONV_GRAD) for op in lbp_ops) == len(rewritten)
    assert sum(op in (ops.PROJECT, ops.PROJECT_MAP) for op in lbp_ops) == len(rewritten)
    assert manifest["loss"]["output"] == graphs["training"].graph.output[0].name
    assert graphs["optimizer"].graph.node[0].op_type.lower().startswith(manifest["optimizer"]["name"])

    state = CheckpointState.load_checkpoint(str(folder / manifest["ort_checkpoint"]))
    for name, value in params.items():  # the tensor file and ORT's checkpoint hold the same values
        np.testing.assert_array_equal(state.parameters[name].data, value, err_msg=name)
    assert {n for n in params if state.parameters[n].requires_grad} == set(trainable)
    module = Module(str(folder / manifest["graphs"]["training"]), state, str(folder / manifest["graphs"]["eval"]))
    optimizer = Optimizer(str(folder / manifest["graphs"]["optimizer"]), module)
    assert module.input_names() == [manifest["inputs"][0]["name"], manifest["labels"]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *manifest["model"]["input_shape"])).astype(np.float32)
    y = rng.integers(0, manifest["model"]["num_classes"], size=2).astype(np.int64)
    optimizer.set_learning_rate(1e-2)
    module.train()
    assert np.isfinite(float(module(x, y)))
    optimizer.step()
    for name, before in params.items():
        changed = not np.array_equal(state.parameters[name].data, before)
        assert changed == (name in trainable), name
    module.eval()
    assert np.isfinite(float(module(x, y)))
    return manifest


@pytest.mark.parametrize("name,lbp,train", CASES)
def test_family_lbp_trainable_set(tmp_path, name, lbp, train):
    out = tmp_path / "art"
    report = export_model(name, out, lbp=lbp, method=train)
    manifest = check_artifact(out)
    assert manifest["model"]["source"] == name and manifest["trainable_set"] == train
    assert manifest["lbp"]["default"] == lbp and manifest["lbp"]["layers"] == report.layers
    statuses = {r["status"] for r in report.layers}
    if lbp == "none":
        assert statuses <= {"exact"}
    elif train in ("all", "last:1"):  # bias/head: no trainable weight on tokens, nothing to make low-rank
        assert "rewritten" in statuses, report.format()
    assert report.trainable > 0 and report.total == report.trainable + report.frozen
    assert report.size == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def test_manifest_schema(tmp_path):
    out = tmp_path / "art"
    export_model("deit-tiny", out, optimizer="sgd", lr=0.05, method="head")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == artifact.SCHEMA_VERSION == 1
    assert manifest["graphs"] == {"training": "training_model.onnx", "eval": "eval_model.onnx",
                                  "optimizer": "optimizer_model.onnx"}
    assert (manifest["ort_checkpoint"], manifest["params"]) == ("ort/checkpoint", "params.safetensors")
    assert sorted(manifest["checksums"]) == sorted(
        ["training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "ort/checkpoint", "params.safetensors"])
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert manifest["labels"] == "labels" and manifest["loss"]["name"] == "cross_entropy"
    assert manifest["optimizer"] == {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 0.05}
    assert manifest["trainable"] == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]
    assert manifest["model"] == {"source": "deit-tiny", "kind": "preset", "family": "deit",
                                 "input_shape": [3, 32, 32], "num_classes": 10}
    assert manifest["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "input_range": [0.0, 1.0]}
    assert manifest["lbp"]["spec"] == "lp-tri:4" and manifest["lbp"]["block"] == "auto"


def test_adamw_hyper_parameters_come_from_the_graph(tmp_path):
    export_model("vit-tiny", tmp_path / "art", method="head", lbp="none")
    optimizer = json.loads((tmp_path / "art" / "manifest.json").read_text())["optimizer"]
    assert optimizer == {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.0,
                         "bias_correction": True, "lr": 1e-3}


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "art"
    export_model("vit-tiny", out, method="head", lbp="none")
    return out


@pytest.mark.parametrize("tamper,message", [
    (lambda d: (d / "params.safetensors").write_bytes(b"0" + (d / "params.safetensors").read_bytes()[1:]),
     "params.safetensors: checksum mismatch"),
    (lambda d: (d / "ort" / "checkpoint").unlink(), "checkpoint: listed in the manifest but missing"),
    (lambda d: (d / "notes.txt").write_text("x"), "notes.txt: not covered"),
    (lambda d: _edit_manifest(d, graphs={**json.loads((d / "manifest.json").read_text())["graphs"],
                                         "training": "../x.onnx"}), "'../x.onnx' leaves the artifact folder"),
    (lambda d: _edit_manifest(d, schema_version=2), "schema version 2"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
])
def test_verify_artifact_catches_tampering(small_artifact, tmp_path, tamper, message):
    folder = tmp_path / "copy"
    shutil.copytree(small_artifact, folder)
    artifact.verify_artifact(folder)
    tamper(folder)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as err:
        artifact.verify_artifact(folder)
    assert "\n" not in str(err.value)


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_existing_artifact_is_replaced_other_folders_are_not(small_artifact, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(small_artifact, again)
    (again / "stale.bin").write_bytes(b"old")
    export_model("vit-tiny", again, method="head", lbp="none")
    assert not (again / "stale.bin").exists()
    artifact.verify_artifact(again)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no artifact"):
        export_model("vit-tiny", precious, method="head", lbp="none")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind
    assert (precious / "thesis.tex").read_text() == "keep me"
