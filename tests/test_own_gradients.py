"""``gradients="own"`` through the public export: artifacts whose training and eval graphs our builder wrote train
on the numba engine as the artifacts of ORT's do (the same model, batch and AdamW steps), through
``edge_lbp.export_model`` and ``edge-lbp export --gradients own``; and our eval graph is laid out as ORT's."""
import numpy as np
import onnx
import pytest

import edge_lbp
from edge_lbp.cli import main

STEPS, BATCH = 5, 4


def _train(folder):
    """Eval logits before training, the losses of STEPS AdamW steps on one fixed batch, the parameters after them
    and the eval logits then."""
    session = edge_lbp.load(folder, "numba")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int64)
    before = session.eval_step(x)
    losses = [session.train_step(x, y) for _ in range(STEPS)]
    return before, losses, session.state.parameters(), session.eval_step(x)


@pytest.mark.parametrize("preset, method", [("vit-tiny", "all"), ("deit-tiny", "all"), ("vit-tiny", "head")])
def test_own_artifact_trains_as_orts(preset, method, tmp_path, export_extra):
    runs = {}
    for gradients in ("ort", "own"):
        edge_lbp.export_model(preset, tmp_path / gradients, method=method, gradients=gradients)
        runs[gradients] = _train(tmp_path / gradients)
    (before, losses, params, after), (ref_before, ref_losses, ref_params, ref_after) = runs["own"], runs["ort"]
    # The same forward nodes on the same initial parameters: the same logits, bit for bit.
    np.testing.assert_array_equal(before, ref_before)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert params.keys() == ref_params.keys()
    for name, value in params.items():
        scale = max(float(np.abs(ref_params[name]).max()), 1e-6)
        np.testing.assert_allclose(value, ref_params[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    np.testing.assert_allclose(after, ref_after, rtol=1e-5, atol=1e-5 * float(np.abs(ref_after).max()))


@pytest.mark.parametrize("preset", ["vit-tiny", "efficientformer-tiny"])
def test_own_eval_graph_is_laid_out_as_orts(preset, tmp_path, export_extra):
    """The same inputs, nodes (efficientformer-tiny's BatchNormalization in inference mode) and constants as
    ORT's eval graph; only the loss's names differ (ORT numbers them with a process-wide counter)."""
    from edge_lbp.export import exporter, training
    from edge_lbp.methods import parse

    forward, _, _ = exporter.load_model(preset)
    trainable, frozen = parse("last:1").split(training.parameter_names(forward), forward)
    graphs = {}
    for gradients in ("ort", "own"):
        paths = training.generate_training_artifacts(forward, tmp_path / gradients, trainable, frozen,
                                                     gradients=gradients)
        graphs[gradients] = onnx.load(paths["eval_model.onnx"]).graph
    ours, ref = graphs["own"], graphs["ort"]
    loss = ref.output[0].name
    renamed = {ref.node[-1].output[1]: ours.node[-1].output[1], loss: ours.output[0].name}
    for node in ref.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
    ref.node[-1].name = ours.node[-1].name
    ref.output[0].name = ours.output[0].name
    assert ours.input == ref.input and ours.output == ref.output
    assert list(ours.node) == list(ref.node) and list(ours.initializer) == list(ref.initializer)
    modes = [a.i for n in ours.node if n.op_type == "BatchNormalization" for a in n.attribute
             if a.name == "training_mode"]
    assert modes == ([0] * 7 if preset == "efficientformer-tiny" else [])


def test_cli_export_with_own_gradients(tmp_path, capsys, export_extra):
    """``edge-lbp export --gradients own`` writes our graphs: the training graph without ORT's training opset,
    the eval graph as our builder builds it, and the artifact trains."""
    from edge_lbp.core.gradients import build_eval_graph
    from edge_lbp.export import exporter, training
    from edge_lbp.methods import parse

    out = tmp_path / "art"
    assert main(["export", "vit-tiny", "-o", str(out), "--gradients", "own"]) == 0
    assert "exported vit-tiny" in capsys.readouterr().out
    model = onnx.load(out / "training_model.onnx")
    assert not any(o.domain == "ai.onnx.training" for o in model.opset_import)
    forward, _, _ = exporter.load_model("vit-tiny")
    trainable, frozen = parse("all").split(training.parameter_names(forward), forward)
    assert onnx.load(out / "eval_model.onnx") == build_eval_graph(forward, trainable, frozen)
    _, losses, _, _ = _train(out)
    assert np.isfinite(losses).all()


def test_unknown_gradient_builder_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown gradient builder 'torch'; choose one of own, ort$"):
        edge_lbp.export_model("vit-tiny", tmp_path, gradients="torch")


def test_onnx_file_exports_without_torch_or_onnxruntime(tmp_path):
    """Exporting an ONNX file needs the core requirements only: in a child Python where torch and onnxruntime
    cannot be imported, the export writes every graph and no ORT checkpoint; the artifact trains on the numba
    engine, and the ort engine says in one line what it lacks."""
    import json
    import subprocess
    import sys

    from onnx_models import CLASSES, INPUT_SHAPE, small_classifier
    from subprocess_guard import BLOCK_WORKSTATION

    onnx.save(small_classifier(), tmp_path / "model.onnx")
    code = BLOCK_WORKSTATION + (
        "import sys, edge_lbp\n"
        "edge_lbp.export_model('model.onnx', 'art', lbp='none', optimizer='sgd')\n"
        "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))\n")
    child = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "loaded: []" in child.stdout
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert "ort_checkpoint" not in manifest and not (tmp_path / "art" / "ort").exists()
    session = edge_lbp.load(tmp_path / "art", "numba")
    rng = np.random.default_rng(0)
    losses = [session.train_step(rng.standard_normal((BATCH, *INPUT_SHAPE)).astype(np.float32),
                                 rng.integers(0, CLASSES, BATCH)) for _ in range(3)]
    assert np.isfinite(losses).all()
    cli = BLOCK_WORKSTATION + "import sys\nfrom edge_lbp.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    for args, needs in ((["vit-tiny", "-o", "preset"], "torch: install the workstation extra (pip install "
                                                       "'edge-lbp[export]')"),
                        (["model.onnx", "-o", "ref", "--gradients", "ort"], "onnxruntime: install the workstation "
                                                                            "extra (pip install 'edge-lbp[ort]')")):
        refused = subprocess.run([sys.executable, "-c", cli, "export", *args], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=600)
        assert refused.returncode != 0 and refused.stderr.strip() == f"edge-lbp: error: export needs {needs}"
    pytest.importorskip("onnxruntime.training", reason="the ort engine needs onnxruntime-training")
    with pytest.raises(ValueError, match=r"art: this artifact has no ORT checkpoint \(it was exported without "
                                         r"onnxruntime-training\); use the numba engine$"):
        edge_lbp.load(tmp_path / "art", "ort")


# The differential test: our training graph against ORT's on the numba engine, for every family and trainable set.
FAMILIES = ("vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny", "hf-vit", "hf-deit-distilled", "hf-swin",
            "mha")
METHODS = ("all", "last:1", "bias", "head", "lora:4", "side", "zo-hybrid:1")
# The full matrix: each family with each method, under both backwards, the optimizer alternating so that every
# family and every method meets both. The default run keeps two cases.
MATRIX = [(family, method, ("adamw", "sgd")[(f + m + b) % 2], lbp) for f, family in enumerate(FAMILIES)
          for m, method in enumerate(METHODS) for b, lbp in enumerate(("lp-tri:4", "none"))
          if (family, method) != ("mha", "side")]  # side reads the input shape from a config, which MhaViT lacks
QUICK = [("hf-swin", "bias", "adamw", "lp-tri:4"), ("mha", "lora:4", "sgd", "none")]


def _source(family):
    """A fresh model of ``family`` (each export gets its own, built from the same seed) and its export options. The
    global seed is set too: the side network draws its initial weights from it."""
    import torch

    torch.manual_seed(0)
    if family.startswith("hf-"):
        from test_export_hf import build

        return build(family[3:]), {}
    if family == "mha":
        from factory_models import mha_vit

        return mha_vit(), {"input_shape": (3, 32, 32)}
    return family, {}


def _gradient_pass(folder, x, y):
    """Loss and gradients of one pass of the artifact's training graph on the numba engine (the plain session:
    zo-hybrid's own session would perturb the front blocks too)."""
    from edge_lbp.core.artifact import Artifact
    from edge_lbp.runtime import open_engine

    session = open_engine(Artifact.open(folder), "numba")
    loss = session.forward_backward(x, y)
    return loss, {k: v.copy() for k, v in session.gradients().items()}


def _train_steps(folder, batches):
    session = edge_lbp.load(folder, "numba", seed=0)
    for x, y in batches:
        session.train_step(x, y)
    return session.state.parameters()


def _check_against_ort(tmp_path, family, method, optimizer, lbp):
    from engine_check import assert_parameters_match, compare_engines, exceeded, rel

    reports = {}
    for g in ("ort", "own"):
        model, options = _source(family)
        reports[g] = edge_lbp.export_model(model, tmp_path / g, method=method, optimizer=optimizer, lbp=lbp, lr=0.01,
                                           gradients=g, **options)
    model = reports["own"].manifest["model"]
    ours, ref = (onnx.load(tmp_path / g / "training_model.onnx").graph for g in ("own", "ort"))
    assert ours.input == ref.input
    assert ours.output[1:] == ref.output[1:] and ours.output[0].type == ref.output[0].type  # ORT numbers the loss
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((3, *model["input_shape"])).astype(np.float32),
                rng.integers(0, model["num_classes"], 3)) for _ in range(STEPS)]
    (loss, grads), (ref_loss, ref_grads) = (_gradient_pass(tmp_path / g, *batches[0]) for g in ("own", "ort"))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    largest = max(float(np.abs(g).max()) for g in ref_grads.values())
    for name, grad in grads.items():
        # 1e-5 of the gradient's largest entry; a gradient that is 0 exactly (a key bias under softmax) is rounding
        # noise in both graphs, held to 1e-8 of the largest gradient entry of all.
        scale = max(float(np.abs(ref_grads[name]).max()), 1e-3 * largest)
        np.testing.assert_allclose(grad, ref_grads[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    initial = edge_lbp.load(tmp_path / "own", "numba").state.parameters()
    trained, ref_trained = (_train_steps(tmp_path / g, batches) for g in ("own", "ort"))
    # zo-hybrid's SPSA moves every front parameter along the same draws in both runs, a key bias too (which
    # backprop leaves near 0): those are compared as any other parameter.
    zo = set(reports["own"].manifest.get("method", {}).get("zo", []))
    assert trained.keys() == ref_trained.keys()
    for name in zo:
        assert rel(trained[name], ref_trained[name]) < 1e-4, name
    assert_parameters_match(*({n: v for n, v in d.items() if n not in zo} for d in (trained, ref_trained, initial)))
    if not zo:  # the ort engine refuses zo-hybrid (it would train the backprop part alone)
        measured = compare_engines(tmp_path / "own", model["input_shape"], model["num_classes"])
        assert not exceeded(measured), measured


@pytest.mark.parametrize("family, method, optimizer, lbp", QUICK)
def test_own_graph_equals_orts(family, method, optimizer, lbp, tmp_path, export_extra):
    _check_against_ort(tmp_path, family, method, optimizer, lbp)


@pytest.mark.slow
@pytest.mark.parametrize("family, method, optimizer, lbp", [c for c in MATRIX if c not in QUICK])
def test_own_graph_equals_orts_everywhere(family, method, optimizer, lbp, tmp_path, export_extra):
    _check_against_ort(tmp_path, family, method, optimizer, lbp)
