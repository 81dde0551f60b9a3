"""Fault injection: divergence, resuming with another artifact, two writers, unwritable outputs, bad labels,
malformed manifests and parameters, a batch too large for memory, and the minor inputs that used to pass silently.
Each case ends in one clear line, and nothing trained is lost."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import edge_lbp.runtime as runtime
import edge_lbp
from edge_lbp.checkpoint import CheckpointError, load_checkpoint, locked, save_checkpoint
from edge_lbp.core.artifact import ArtifactError
from edge_lbp.runtime.session import NonFiniteStep
from edge_lbp.status import ExitStatus

pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")

from edge_lbp.cli import main  # noqa: E402
from edge_lbp.data import open_dataset  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.trainer import DivergenceError, DivergenceWarning, Trainer  # noqa: E402
from test_data import write_folder  # noqa: E402
from test_stop_signals import handles_sigterm  # noqa: E402

THREADS = 1


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rel") / "vit-tiny"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images") / "data", per_class=4)


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-lbp: error: "), err
    return err[0]


# -- 1. divergence -------------------------------------------------------------------------------------------------
def test_a_non_finite_step_leaves_parameters_and_moments_bit_identical(artifact):
    session = edge_lbp.load(artifact, threads=THREADS)
    x, y = _batch()
    session.train_step(x, y)
    params, state = session.state.parameters(), session.state.optimizer_state()
    x[1, 0, 3, 3] = np.nan
    with pytest.raises(NonFiniteStep, match="step rejected, parameters unchanged"):
        session.train_step(x, y)
    assert all(np.array_equal(v, params[n]) for n, v in session.state.parameters().items())
    after = session.state.optimizer_state()
    assert after["step"] == state["step"]
    assert all(np.array_equal(after[m][n], state[m][n]) for m in state if m != "step" for n in state[m])


def test_trainer_rejects_bad_steps_then_stops_and_never_saves_them(artifact, tmp_path):
    trainer = Trainer(artifact, threads=THREADS, max_rejected=3)
    good, bad = _batch(seed=1), _batch(seed=2)
    bad[0][0] = np.inf
    trainer.step(*good)
    trainer.save(tmp_path / "ckpt")
    saved = _digest(tmp_path / "ckpt")
    params = trainer.session.state.parameters()
    with pytest.warns(DivergenceWarning, match=r"epoch 1, batch 1: the loss is nan.*\(1 in a row, 1 in all\)"):
        assert not np.isfinite(trainer.step(*bad))
    trainer.step(*good)  # a good step in between resets the count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        trainer.step(*bad), trainer.step(*bad)
        before_stop = trainer.session.state.parameters()
        with pytest.raises(DivergenceError, match="3 steps in a row rejected.*lower the learning rate"):
            trainer.step(*bad)
    assert trainer.rejected == 4 and trainer.updates == 2
    assert all(np.array_equal(v, before_stop[n]) for n, v in trainer.session.state.parameters().items())
    assert any(not np.array_equal(v, params[n]) for n, v in before_stop.items())  # the good step did train
    assert _digest(tmp_path / "ckpt") == saved


def test_checkpoints_never_hold_non_finite_tensors(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": np.ones(3, np.float32)}, {"x": 1})
    kept = _digest(tmp_path / "c")
    with pytest.raises(CheckpointError, match="not saved: w holds NaN or infinite values"):
        save_checkpoint(tmp_path / "c", {"w": np.array([1, np.nan, 2], np.float32)}, {"x": 2})
    assert _digest(tmp_path / "c") == kept and load_checkpoint(tmp_path / "c")[1] == {"x": 1}
    # A file that someone else wrote with a NaN inside (checksums recomputed) is refused on loading.
    from safetensors.numpy import save_file

    record = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    tensors = tmp_path / "c" / record["tensors"]
    save_file({"w": np.array([np.inf], np.float32)}, str(tensors))
    record["sha256"] = hashlib.sha256(tensors.read_bytes()).hexdigest()
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="w holds NaN or infinite values; this checkpoint cannot be used"):
        load_checkpoint(tmp_path / "c")


def test_cli_refuses_a_non_finite_learning_rate(artifact, images, capsys):
    assert main(["train", str(artifact), "--data", str(images), "--lr", "inf"]) == 2
    assert "--lr: inf must be > 0 and finite" in _one_error_line(capsys)


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(artifact, tmp_path, capsys):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_train=np.arange(8) % 2)
    args = ["train", str(artifact), "--data", str(data), "--threads", "1", "--batch-size", "4", "--no-augment"]
    assert main(args + ["--checkpoint", str(tmp_path / "ckpt"), "--epochs", "1"]) == 0
    saved = _digest(tmp_path / "ckpt")
    # Resumed with an absurd learning rate: the parameters blow up after one update, then every loss is NaN.
    trainer = Trainer.resume(tmp_path / "ckpt", threads=1)
    trainer.peak_lr, trainer.max_rejected = 1e30, 2
    dataset = open_dataset(data, trainer.manifest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DivergenceError, match="2 steps in a row rejected"):
            trainer.fit(dataset, epochs=4, batch_size=4, augment=False, checkpoint=tmp_path / "ckpt",
                        progress=False)
    assert any("not saved after epoch" in str(w.message) for w in caught)
    assert _digest(tmp_path / "ckpt") == saved  # the good checkpoint is still the one there
    capsys.readouterr()
    assert main(args + ["--lr", "1e30", "--epochs", "3", "--max-rejected", "2"]) == ExitStatus.DIVERGED == 3
    *notes, last = capsys.readouterr().err.strip().splitlines()
    assert last.startswith("edge-lbp: error: 2 steps in a row rejected")
    assert notes and all(n.startswith("edge-lbp: warning: ") and "step rejected" in n for n in notes)


def test_a_run_that_ends_on_rejected_steps_never_exits_0(artifact, tmp_path, capsys):
    """Fewer than --max-rejected in a row, but every epoch ends on a rejected step: no checkpoint is ever written,
    and the status says diverged, not success."""
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_train=np.arange(8) % 2)
    folder = tmp_path / "ckpt"
    # The first update at 1e30 blows the parameters up; the 5 steps after it are rejected (limit: 10 in a row).
    args = ["train", str(artifact), "--data", str(data), "--threads", "1", "--batch-size", "4", "--no-augment",
            "--lr", "1e30", "--epochs", "3", "--checkpoint", str(folder)]
    assert main(args) == ExitStatus.DIVERGED
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("step rejected" in line for line in err) == 5 and "not saved after epoch 3" in err[-2]
    assert err[-1] == ("edge-lbp: error: the run ended on a rejected step (5 in a row, 5 rejected in all): no "
                       "checkpoint was saved; lower the learning rate or check the data")
    assert not (folder / "checkpoint.json").exists()
    # With a good checkpoint before the divergence, the message points at it and the checkpoint stays as it was.
    good = args[:-6] + ["--lr", "1e-3", "--epochs", "1", "--checkpoint", str(tmp_path / "c2")]
    assert main(good) == ExitStatus.OK
    saved = _digest(tmp_path / "c2")
    trainer = Trainer.resume(tmp_path / "c2", threads=1)
    trainer.peak_lr = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        with pytest.raises(DivergenceError, match=f"ended on a rejected step .*: {tmp_path / 'c2'} holds the last "
                                                  "checkpoint saved after a good step"):
            trainer.fit(open_dataset(data, trainer.manifest), epochs=3, batch_size=4, augment=False,
                        checkpoint=tmp_path / "c2", progress=False)
    assert _digest(tmp_path / "c2") == saved


# -- 2. resuming with another artifact -----------------------------------------------------------------------------
def test_resume_with_another_artifact_is_refused_and_the_checkpoint_untouched(artifact, tmp_path, capsys):
    head_only = tmp_path / "head"
    export_model("vit-tiny", head_only, method="head", lr=1e-3)
    trainer = Trainer(artifact, threads=THREADS)
    trainer.step(*_batch())
    trainer.save(tmp_path / "ckpt")
    saved = _digest(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="saved with 32 trainable tensors, .* trains 2 .*resume with the "
                                              "artifact it was saved from"):
        Trainer.resume(tmp_path / "ckpt", head_only, threads=THREADS)
    other = tmp_path / "other"  # the same trainable set, other graphs (SGD instead of AdamW)
    export_model("vit-tiny", other, optimizer="sgd", lr=1e-3)
    with pytest.raises(CheckpointError, match="saved from another artifact"):
        Trainer.resume(tmp_path / "ckpt", other, threads=THREADS)
    assert _digest(tmp_path / "ckpt") == saved
    moved = tmp_path / "moved"  # the same artifact in another folder resumes
    os.rename(artifact, moved)
    try:
        assert Trainer.resume(tmp_path / "ckpt", moved, threads=THREADS).updates == 1
    finally:
        os.rename(moved, artifact)


def test_checkpoint_with_a_malformed_position_is_one_line(artifact, tmp_path):
    trainer = Trainer(artifact, threads=THREADS)
    trainer.save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "checkpoint.json"
    record = json.loads(path.read_text())
    record["metadata"]["position"]["epoch"] = "3"
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="position epoch is '3', not a count"):
        Trainer.resume(tmp_path / "ckpt", threads=THREADS)


# -- 3. one writer per checkpoint folder ---------------------------------------------------------------------------
HOLD = """
import sys, time
from edge_lbp.checkpoint import locked
with locked(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_at_start_and_a_dead_one_is_taken_over(artifact, images, tmp_path):
    folder = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "edge_lbp", "train", str(artifact), "--data", str(images),
                                 "--checkpoint", str(folder), "--epochs", "1", "--threads", "1"],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stdout == ""  # refused before loading or training anything
        assert second.stderr.strip() == (f"edge-lbp: error: {folder}: in use by another training run (process "
                                         f"{holder.pid}); wait for it to end or choose another folder")
        assert time.perf_counter() - started < 60
    finally:
        holder.kill()  # SIGKILL: its lock is left behind exactly as a crash leaves it
        holder.wait()
    with locked(folder):  # the kernel released the dead holder's flock: taken over
        assert (folder / ".lock").read_text().strip() == str(os.getpid())


def test_saves_never_touch_another_writers_files(tmp_path):
    folder = tmp_path / "c"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        (folder / ".tensors-theirs.tmp").write_bytes(b"a save in progress")
        with pytest.raises(CheckpointError, match="in use by another training run"):
            save_checkpoint(folder, {"w": np.ones(2, np.float32)}, {})
        assert (folder / ".tensors-theirs.tmp").exists()
    finally:
        holder.kill()
        holder.wait()


# -- 4. outputs checked before the first step ----------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--export-onnx", "--checkpoint"])
def test_unwritable_outputs_fail_before_training(artifact, images, tmp_path, capsys, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / ("adapted.onnx" if option == "--export-onnx" else "ckpt")
    code = main(["train", str(artifact), "--data", str(images), "--threads", "1", "--epochs", "1",
                 option, str(target)])
    assert code == 2
    out = capsys.readouterr()
    assert "epoch" not in out.out and str(blocker) in out.err and len(out.err.strip().splitlines()) == 1


def test_profile_output_is_checked_before_profiling(artifact, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["profile", str(artifact), "--out", str(tmp_path / "f" / "out"), "--steps", "1"]) == 2
    assert "cannot be written" in _one_error_line(capsys)


# -- 5. labels -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2, -1]), "labels range from -1 to 2; the model has 10 classes"),
    (np.array([0, 1, 2, 10]), "labels range from 0 to 10"),
    (np.array([0.0, 1.0, 2.7, 3.0]), "labels of dtype float64: pass integer class indices"),
    (np.eye(10, dtype=np.int64)[[0, 1, 2, 3]], r"labels of shape \(4, 10\).*one-hot"),
    (np.array([0, 1, 2]), "labels of shape \\(3,\\) for a batch of 4"),
])
def test_bad_labels_are_refused_on_the_api(artifact, labels, message):
    session = edge_lbp.load(artifact, threads=THREADS)
    params = session.state.parameters()
    with pytest.raises(ValueError, match=message):
        session.train_step(_batch()[0], labels)
    assert all(np.array_equal(v, params[n]) for n, v in session.state.parameters().items())


@pytest.mark.parametrize("arrays, message", [
    ({"y_train": np.array([0.0, 1.5, 1.0, 0.0])}, "y_train is float64; labels must be integer class indices"),
    ({"y_train": np.eye(3, dtype=np.int64)[[0, 1, 2, 0]]}, r"y_train has shape \(4, 3\).*one-hot"),
    ({"label_names": np.array(["a"])}, "label_names has 1 names but y_train goes up to 2"),
])
def test_bad_labels_in_npz_files_are_refused(artifact, tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **{"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.array([0, 1, 2, 0]), **arrays})
    with pytest.raises(ValueError, match=message):
        open_dataset(path, runtime.Artifact.open(artifact).manifest)


# -- 6. one line instead of a traceback ----------------------------------------------------------------------------
@pytest.mark.parametrize("manifest, message", [
    ([], "JSON list, not an object"), (None, "JSON NoneType"),
    ("graphs", "names no training graph"), ("inputs", "'inputs' must list"),
])
def test_malformed_manifests_are_one_line(artifact, images, tmp_path, capsys, manifest, message):
    copy = tmp_path / "art"
    import shutil

    shutil.copytree(artifact, copy)
    path = copy / "manifest.json"
    if isinstance(manifest, str):
        manifest = {**json.loads(path.read_text()), manifest: {} if manifest == "graphs" else []}
    path.write_text(json.dumps(manifest))
    assert main(["train", str(copy), "--data", str(images), "--epochs", "1"]) == 2
    assert message in _one_error_line(capsys)


def test_parameter_shapes_are_checked_when_loading(artifact, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    params = load_file(str(copy / "params.safetensors"))
    name = sorted(params)[0]
    params[name] = np.zeros((*params[name].shape, 2), np.float32)
    save_file(params, str(copy / "params.safetensors"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checksums"]["params.safetensors"] = hashlib.sha256((copy / "params.safetensors").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"params.safetensors: parameter {name} has shape"):
        edge_lbp.load(copy)


def test_a_batch_too_large_for_memory_is_refused_with_the_largest_that_fits(artifact, images, monkeypatch):
    trainer = Trainer(artifact, threads=THREADS)
    one, eight = trainer.session.step_bytes(1), trainer.session.step_bytes(8)
    free = (one + eight) / 2 / 0.9  # room for about batch 4 of the estimate

    class Memory:
        available = free

    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory)
    params = trainer.session.state.parameters()
    data = open_dataset(images, trainer.manifest)
    with pytest.raises(MemoryError, match=r"batch 8 needs about .* the largest batch that fits is about [34]"):
        trainer.fit(data, epochs=1, batch_size=8, progress=False)
    assert trainer.updates == 0
    assert all(np.array_equal(v, params[n]) for n, v in trainer.session.state.parameters().items())
    trainer.fit(data, epochs=1, batch_size=2, progress=False)  # a batch that fits trains
    assert trainer.updates == 6


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size: 0 must be >= 1"),
    (["--threads", "0"], "--threads: 0 must be >= 1"),
    (["--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["--lr", "-1"], "--lr: -1 must be > 0"),
])
def test_bad_numbers_are_one_line(artifact, images, capsys, args, message):
    assert main(["train", str(artifact), "--data", str(images), *args]) == 2
    assert message in _one_error_line(capsys)


def test_a_factory_that_is_not_a_model_is_one_line(tmp_path, capsys):
    assert main(["export", "os:system", "-o", str(tmp_path / "x")]) == 2
    _one_error_line(capsys)


# -- 8. the minor ones ---------------------------------------------------------------------------------------------
def test_threads_zero_on_the_api_is_refused():
    from edge_lbp.core.config import set_threads

    with pytest.raises(ValueError, match="threads=0"):
        set_threads(0)


def test_a_single_class_is_warned_about(artifact, tmp_path):
    data = write_folder(tmp_path / "one", per_class=4, classes=("cat",))
    trainer = Trainer(artifact, threads=THREADS)
    with pytest.warns(UserWarning, match="every training sample has the same label"):
        trainer.fit(open_dataset(data, trainer.manifest), epochs=1, batch_size=4, progress=False)


def test_an_lbp_override_that_matches_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="override pattern 'block.0.\\*' matches no trainable linear layer"):
        export_model("vit-tiny", tmp_path / "x", lbp="lp-tri:4,block.0.*=none")


@pytest.mark.parametrize("content, message", [(b"this is not a zip", "not a zip archive"), (None, "empty .npz")])
def test_broken_npz_files_are_named(artifact, tmp_path, content, message):
    path = tmp_path / "d.npz"
    if content is None:
        np.savez(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        open_dataset(path, runtime.Artifact.open(artifact).manifest)


def test_resuming_a_finished_run_says_so(artifact, images, tmp_path, capsys):
    args = ["train", str(artifact), "--data", str(images), "--threads", "1", "--checkpoint", str(tmp_path / "c"),
            "--epochs", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "already finished (1 of 1 epochs done); nothing to train" in out and "epoch 2" not in out


def test_artifacts_and_checkpoints_are_readable_by_others(artifact, tmp_path):
    old = os.umask(0o022)
    try:
        export_model("vit-tiny", tmp_path / "art", method="head")
        save_checkpoint(tmp_path / "c", {"w": np.ones(2, np.float32)}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in (tmp_path / "art").rglob("*"))
    assert (tmp_path / "c" / "checkpoint.json").stat().st_mode & 0o777 == 0o644


# -- kill -9 at random moments, inside saves too ---------------------------------------------------------------------
def _long_run(tmp_path):
    """The stop loops' run (``command(folder, resume, *more options)``) and its uninterrupted reference
    checkpoint."""
    from edge_lbp.export.models import load_pretrained
    from edge_lbp.synthetic import write_task

    art = tmp_path / "art"  # the bundled 1.2 M-parameter backbone: saves take long enough to be hit
    export_model(load_pretrained("vit-c10", num_classes=8), art, lr=1e-3)
    data = write_task(tmp_path / "task.npz", train_per_class=8, val_per_class=1)

    def command(folder, resume, *options):
        return [sys.executable, "-m", "edge_lbp", "train", str(art), "--data", str(data), "--epochs", "30",
                "--batch-size", "16", "--threads", "1", "--checkpoint", str(folder), *options,
                *(["--resume"] if resume else [])]

    reference = subprocess.run(command(tmp_path / "ref", False), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    return command, tmp_path / "ref"


def _assert_bit_identical(reference, folder):
    (ref_tensors, ref_meta), (tensors, meta) = load_checkpoint(reference), load_checkpoint(folder)
    assert ref_tensors.keys() == tensors.keys()
    assert all(np.array_equal(ref_tensors[k], tensors[k]) for k in tensors)
    assert [h["train_loss"] for h in meta["history"]] == [h["train_loss"] for h in ref_meta["history"]]


@pytest.mark.slow
def test_kill_9_loop_resumes_bit_identically(tmp_path):
    """`edge-lbp train` killed with SIGKILL at least 10 times (the first ones the moment a save has begun), each
    time resumed from its checkpoint, ends bit-identical to an uninterrupted run; no kill leaves a partial one."""
    command, reference = _long_run(tmp_path)
    folder, kills, in_save, rng = tmp_path / "killed", 0, 0, np.random.default_rng(0)
    for _ in range(60):
        started = (folder / "checkpoint.json").exists()
        process = subprocess.Popen(command(folder, started), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        hunting_saves = kills < 5  # first kills: the moment a save is under way, however long the start takes
        deadline = time.monotonic() + (600.0 if kills >= 12 or hunting_saves else rng.uniform(1.5, 3.0))
        while process.poll() is None and time.monotonic() < deadline:
            if hunting_saves and list(folder.glob(".tensors-*.tmp")):
                break
            time.sleep(0.001)
        if process.poll() is None and kills < 12:
            in_save += bool(list(folder.glob(".tensors-*.tmp")))
            process.kill()
            process.wait()
            kills += 1
            if (folder / "checkpoint.json").exists():
                load_checkpoint(folder)  # whatever the moment, what is committed loads and checks
            continue
        assert process.wait(timeout=600) == 0, process.stderr.read().decode()
        break
    assert kills >= 10 and in_save >= 1, (kills, in_save)
    _assert_bit_identical(reference, folder)


@pytest.mark.slow
def test_sigterm_loop_saves_at_the_next_update_and_resumes_bit_identically(tmp_path):
    """`edge-lbp train` stopped with SIGTERM (a service manager's stop) at least 8 times at random moments, saves
    at the next update and exits 143 with one line; each time resumed, it ends bit-identical to an uninterrupted
    run."""
    command, reference = _long_run(tmp_path)
    folder, stops, rng = tmp_path / "stopped", 0, np.random.default_rng(1)
    for _ in range(40):
        started = (folder / "checkpoint.json").exists()
        process = subprocess.Popen(command(folder, started), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        while process.poll() is None and not handles_sigterm(process.pid):
            time.sleep(0.005)
        deadline = time.monotonic() + (600.0 if stops >= 8 else rng.uniform(0.0, 4.0))
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is None and stops < 8:
            process.send_signal(signal.SIGTERM)
            err = process.communicate(timeout=300)[1]
            if process.returncode == 0:  # the signal came after the last epoch's save: the run is complete
                break
            stops += 1
            assert process.returncode == ExitStatus.TERMINATED == 143, err
            assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("edge-lbp: stopped by SIGTERM")
            stopped = re.search(r"in epoch (\d+) after batch (\d+); saved to", err)
            if stopped:  # stopped inside training: the checkpoint is the state at that update
                position = load_checkpoint(folder)[1]["position"]
                assert (position["epoch"] + 1, position["batch"]) == tuple(map(int, stopped.groups())), err
            continue
        assert process.wait(timeout=600) == 0, process.stderr.read()
        break
    assert stops >= 8, stops
    _assert_bit_identical(reference, folder)
