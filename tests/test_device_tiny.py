"""The device path on a committed artifact, with neither torch nor onnxruntime: what runs on the boards.

``tests/fixtures/tiny_vit`` was exported on x86_64 by ``tests/fixtures/make_tiny_artifact.py``, and
``tiny_vit_reference.json`` holds what ONNX Runtime training (the numerical reference) and the numba engine gave
there on the same inputs (``tests/fixtures/reference.py record``). Here, on any machine: the numba engine against
both, the Trainer with checkpoints, the profiler, and the CLI.
"""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_lbp.runtime as runtime
import edge_lbp
from edge_lbp.checkpoint import load_checkpoint
from edge_lbp.cli import main
from edge_lbp.data import open_dataset, random_batches
from edge_lbp.profiler import profile
from edge_lbp.trainer import Trainer
from test_data import write_folder

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("tiny_vit_reference", FIXTURES / "reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

ARTIFACT = reference.ARTIFACT
THREADS = 1  # steady on a shared machine; the results do not depend on it


@pytest.fixture(scope="module")
def recorded():
    return json.loads(reference.REFERENCE.read_text())


@pytest.fixture(scope="module")
def trained(recorded):
    """The numba engine on the reference's inputs, here."""
    losses, initial, final, logits = reference.train(ARTIFACT, "numba", recorded["steps"], threads=THREADS)
    return {"losses": losses, "parameters": reference.checksums(initial, final),
            "logits_l2": float(np.linalg.norm(logits.astype(np.float64)))}


def test_the_reference_was_recorded_for_this_artifact(recorded):
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    assert recorded["checksums"] == manifest["checksums"], \
        "tiny_vit changed since the reference was recorded: run tests/fixtures/reference.py record"
    runtime.Artifact.open(ARTIFACT)  # every file matches its checksum
    assert {layer["status"] for layer in manifest["lbp"]["layers"]} == {"exact", "rewritten"}


def _mismatches(got, expected, tol):
    """What differs by more than ``tol``: losses relative to themselves; each parameter's norm and projections
    relative to the parameter's norm (both are bounded by the norm of the difference)."""
    bad = [f"loss {i}: {g} != {e}" for i, (g, e) in enumerate(zip(got["losses"], expected["losses"]))
           if not abs(g - e) <= tol * abs(e)]
    if len(got["losses"]) != len(expected["losses"]):
        bad.append(f"{len(got['losses'])} losses, expected {len(expected['losses'])}")
    if got["parameters"].keys() != expected["parameters"].keys():
        bad.append(f"parameters differ: {sorted(got['parameters'].keys() ^ expected['parameters'].keys())}")
    for name in sorted(got["parameters"].keys() & expected["parameters"].keys()):
        g, e = got["parameters"][name], expected["parameters"][name]
        bad += [f"{name} {key}: {g[key]:.9g} != {e[key]:.9g}" for key in e
                if not abs(g[key] - e[key]) <= tol * max(e["l2"], 1e-6)]
    if not abs(got["logits_l2"] - expected["logits_l2"]) <= tol * expected["logits_l2"]:
        bad.append(f"logits norm {got['logits_l2']} != {expected['logits_l2']}")
    return bad


def test_numba_engine_matches_onnx_runtime_on_x86_64(trained, recorded):
    """The same tolerance as the engine tests on x86_64 (tests/test_runtime_engines.py), 1e-4."""
    assert _mismatches(trained, recorded["engines"]["ort"], 1e-4) == []


def test_numba_engine_matches_itself_on_x86_64(trained, recorded):
    """Across architectures (aarch64 against the x86_64 recording) the engine agrees to 1e-5."""
    assert _mismatches(trained, recorded["engines"]["numba"], 1e-5) == []


def test_the_comparison_can_fail(trained, recorded):
    expected = recorded["engines"]["numba"]
    off = json.loads(json.dumps(trained))
    off["losses"][-1] *= 1 + 1e-4
    name = sorted(off["parameters"])[0]
    off["parameters"][name]["update_dot"] += 1e-3 * expected["parameters"][name]["l2"]
    assert len(_mismatches(off, expected, 1e-5)) == 2


def _batches(count, seed=0, n=4):
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    shape = manifest["inputs"][0]["shape"][1:]
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 4, n)) for _ in range(count)]


def test_trainer_resumes_bit_for_bit(tmp_path):
    config = {"schedule": "cosine", "warmup_steps": 1, "total_steps": 6, "clip_norm": 0.5, "accumulate": 2}
    data = _batches(6)
    straight = Trainer(ARTIFACT, threads=THREADS, **config)
    straight_losses = [straight.step(x, y) for x, y in data]
    first = Trainer(ARTIFACT, threads=THREADS, **config)
    losses = [first.step(x, y) for x, y in data[:4]]
    first.save(tmp_path / "ckpt")
    tensors, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta and any(np.any(v != 0) for v in tensors.values())
    resumed = Trainer.resume(tmp_path / "ckpt", threads=THREADS)
    assert resumed.updates == first.updates == 2
    losses += [resumed.step(x, y) for x, y in data[4:]]
    assert np.array_equal(losses, straight_losses)
    mine, theirs = resumed.session.state.parameters(), straight.session.state.parameters()
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[n], theirs[n]) for n in mine)
    initial = edge_lbp.load(ARTIFACT, threads=THREADS).state.parameters()
    assert any(not np.array_equal(mine[n], initial[n]) for n in mine)


def test_fit_and_evaluate_on_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=4, size=(20, 24))
    trainer = Trainer(ARTIFACT, threads=THREADS, lr=1e-2)
    data = open_dataset(folder, trainer.manifest)
    history = trainer.fit(data, data, epochs=2, batch_size=4, checkpoint=tmp_path / "ckpt", progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in history)
    result = Trainer.resume(tmp_path / "ckpt", threads=THREADS).evaluate(data)
    assert result["samples"] == 12 and result["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)


def test_profiler_times_every_phase_and_the_lbp_ops():
    session = edge_lbp.load(ARTIFACT, "numba", threads=THREADS)
    prof = profile(session, random_batches(session.artifact.manifest, 4), steps=2, warmup=1)
    report = prof.report()
    assert report["steps"] == 2 and set(report["phases"]) == {"forward", "backward", "optimizer"}
    ops = {(row["op_type"], row["phase"]) for row in report["ops"]}
    assert ("WHTProject", "forward") in ops and ("WHTMatMulGradAccumulate", "backward") in ops
    assert all(np.isfinite(report["losses"]))


def test_cli_train_eval_profile_and_inference_export(tmp_path, capsys):
    import onnx

    folder = write_folder(tmp_path / "data", per_class=3)
    ckpt, adapted, out = tmp_path / "ckpt", tmp_path / "adapted.onnx", tmp_path / "profile"
    assert main(["train", str(ARTIFACT), "--data", str(folder), "--epochs", "1", "--batch-size", "4", "--threads",
                 "1", "--checkpoint", str(ckpt), "--export-onnx", str(adapted)]) == 0
    assert main(["eval", str(ARTIFACT), "--data", str(folder), "--checkpoint", str(ckpt), "--threads", "1"]) == 0
    assert "accuracy" in capsys.readouterr().out
    model = onnx.load(str(adapted))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10  # what ONNX Runtime 1.19 reads, whichever onnx wrote it
    assert main(["profile", str(ARTIFACT), "--steps", "2", "--warmup", "1", "--batch-size", "4", "--threads", "1",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"report.json", "trace.json", "figure.html"}
    assert json.loads((out / "report.json").read_text())["steps"] == 2


def test_cli_damaged_artifact_is_one_clear_line(tmp_path, capsys):
    damaged = shutil.copytree(ARTIFACT, tmp_path / "tiny_vit")
    params = damaged / "params.safetensors"
    params.write_bytes(params.read_bytes()[:-64])
    assert main(["profile", str(damaged), "--steps", "1", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-lbp: error: ") and err.count("\n") == 1 and "params.safetensors" in err


def _assert_gradients_equal(loss, grads, want):
    assert sorted(grads) == sorted(k[len("grad/"):] for k in want.files if k.startswith("grad/"))
    assert loss == pytest.approx(float(want["loss"]), rel=1e-5)
    for name, grad in grads.items():
        expected = want[f"grad/{name}"]
        scale = max(float(np.abs(expected).max()), 1e-6)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_the_board_exports_an_onnx_file_with_orts_gradients(tmp_path):
    """`edge-lbp export model.onnx` with the core requirements alone (what a board has): our gradient builder's
    artifact of tiny_vit.onnx gives, on its first batch, the loss and gradients ONNX Runtime training gave for the
    same file on x86_64 (``reference.py record-gradients``), within 1e-5; and it trains."""
    art = tmp_path / "art"
    assert main(["export", str(reference.FORWARD), "-o", str(art)]) == 0
    _assert_gradients_equal(*reference.first_gradients(art), np.load(reference.GRADIENTS))
    losses, *_ = reference.train(art, "numba", steps=3)
    assert np.isfinite(losses).all()


def test_the_gradient_comparison_can_fail():
    loss, grads = reference.first_gradients(ARTIFACT)  # lp-tri:2 on a 4x4 block: not the file's default export
    with pytest.raises(AssertionError):
        _assert_gradients_equal(loss, grads, np.load(reference.GRADIENTS))


def test_the_committed_ort_gradients_are_orts(tmp_path):
    """The reference file is what ONNX Runtime training gives here (where it is installed)."""
    pytest.importorskip("onnxruntime.training", reason="the reference gradients are ONNX Runtime training's")
    edge_lbp.export_model(str(reference.FORWARD), tmp_path / "ref", gradients="ort")
    _assert_gradients_equal(*reference.first_gradients(tmp_path / "ref", "ort"), np.load(reference.GRADIENTS))
