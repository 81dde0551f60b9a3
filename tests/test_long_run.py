"""A board's long runs: checkpoints every N updates (``--checkpoint-every``), mid-epoch ones resuming bit for bit, a
save that fails midway keeping the previous checkpoint, and 2,000 steps whose memory, file descriptors and
checkpoints stay as they were."""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import edge_lbp.checkpoint as checkpoint
from edge_lbp.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from edge_lbp.status import ExitStatus

pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")

from edge_lbp.cli import main  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.synthetic import write_task  # noqa: E402
from edge_lbp.trainer import DivergenceWarning, Trainer  # noqa: E402
from test_reliability import _assert_bit_identical, _batch, _digest, _long_run  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long") / "vit-tiny"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


def _state(trainer):
    return trainer.session.state.parameters(), trainer.session.state.optimizer_state()


def _saves(trainer):
    """Record the position of every checkpoint ``trainer`` writes: ``(epoch, batch, updates)``."""
    positions, save = [], trainer.save

    def recording(folder):
        save(folder)
        positions.append((trainer.epoch, trainer.batch, trainer.updates))

    trainer.save = recording
    return positions


def test_checkpoint_every_counts_updates_and_a_mid_epoch_one_resumes_bit_identically(artifact, tmp_path):
    data = tmp_path / "d.npz"
    write_task(data, train_per_class=2, val_per_class=1)  # 16 images: 8 batches of 2, 4 updates of 2 per epoch
    options = dict(epochs=2, batch_size=2, checkpoint_every=3, progress=False)
    reference = Trainer(artifact, threads=1, accumulate=2)
    saved = _saves(reference)
    from edge_lbp.data import open_dataset

    train = open_dataset(data, reference.manifest)
    reference.fit(train, checkpoint=tmp_path / "ref", **options)
    # Updates 3 and 6 mid-epoch (batches 6 and 4: an update is 2 batches), and each epoch's end.
    assert saved == [(0, 6, 3), (1, 0, 4), (1, 4, 6), (2, 0, 8)]

    crashing = Trainer(artifact, threads=1, accumulate=2)
    step = crashing.step

    def crash_in_batch_7(x, y):  # after update 3's save, before the epoch's
        if (crashing.epoch, crashing.batch) == (0, 6):
            raise RuntimeError("power cut")
        return step(x, y)

    crashing.step = crash_in_batch_7
    with pytest.raises(RuntimeError, match="power cut"):
        crashing.fit(train, checkpoint=tmp_path / "c", **options)
    assert load_checkpoint(tmp_path / "c")[1]["position"]["batch"] == 6  # the mid-epoch one of update 3
    resumed = Trainer.resume(tmp_path / "c", threads=1)
    resumed.fit(train, checkpoint=tmp_path / "c", **options)
    (params, moments), (ref_params, ref_moments) = _state(resumed), _state(reference)
    assert all(np.array_equal(params[n], ref_params[n]) for n in ref_params)
    assert moments["step"] == ref_moments["step"] == 8
    assert all(np.array_equal(moments[e][n], ref_moments[e][n]) for e in moments if e != "step" for n in moments[e])
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]


def test_checkpoint_every_skips_rejected_steps(artifact, tmp_path):
    good, bad = _batch(seed=1), _batch(seed=2)
    bad[0][0] = np.nan
    trainer = Trainer(artifact, threads=1)
    saved = _saves(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        trainer.fit([good, good, bad, good, good], checkpoint=tmp_path / "c", checkpoint_every=1, progress=False)
    # Not after the rejected third batch, and the last batch's save is the epoch's own.
    assert saved == [(0, 1, 1), (0, 2, 2), (0, 4, 3), (1, 0, 4)]
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint folder"):
        trainer.fit([good], epochs=2, checkpoint_every=1, progress=False)


def test_cli_checkpoint_every_needs_a_folder(artifact, tmp_path, capsys):
    data = write_task(tmp_path / "d.npz", train_per_class=1, val_per_class=1)
    assert main(["train", str(artifact), "--data", str(data), "--checkpoint-every", "5"]) == ExitStatus.BAD_INPUT
    assert capsys.readouterr().err.strip() == ("edge-lbp: error: --checkpoint-every needs --checkpoint DIR (the "
                                               "folder to save to)")


def _without_lock(folder):
    return {k: v for k, v in _digest(folder).items() if k != checkpoint.LOCK}  # the lock records the writer's pid


def test_a_save_that_hits_a_file_size_limit_keeps_the_previous_checkpoint(artifact, tmp_path, capsys):
    data = write_task(tmp_path / "d.npz", train_per_class=2, val_per_class=1)
    folder = tmp_path / "c"
    args = ["train", str(artifact), "--data", str(data), "--batch-size", "4", "--threads", "1", "--no-augment",
            "--checkpoint", str(folder)]
    assert main(args + ["--epochs", "1"]) == ExitStatus.OK
    kept = _without_lock(folder)
    size = max((folder / name).stat().st_size for name in kept)

    def limit_file_size():  # the child's writes stop at half a checkpoint, midway through the next save
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    run = subprocess.run([sys.executable, "-m", "edge_lbp", *args, "--epochs", "2", "--checkpoint-every", "1",
                          "--resume"], capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert run.returncode == ExitStatus.ERROR, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"edge-lbp: error: {folder}{os.sep}tensors-") and line.endswith(
        ".safetensors: writing failed (Error while serializing: I/O error: File too large (os error 27)): "
        "checkpoint not saved, the previous checkpoint there is kept"), line
    assert _without_lock(folder) == kept  # nothing partial left, nothing of the old one changed
    assert load_checkpoint(folder)[1]["position"]["epoch"] == 1
    assert main(args + ["--epochs", "2", "--resume"]) == ExitStatus.OK  # and the run goes on from it


def test_a_full_disk_at_the_commit_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    save_checkpoint(folder, {"w": np.ones(3, np.float32)}, {"n": 1})
    kept = _without_lock(folder)

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_atomic", full_disk)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(folder, {"w": np.zeros(3, np.float32)}, {"n": 2})
    assert str(caught.value) == (f"{folder / 'checkpoint.json'}: writing failed ([Errno 28] No space left on "
                                 "device): checkpoint not saved, the previous checkpoint there is kept")
    assert caught.value.exit_status == ExitStatus.ERROR
    assert _without_lock(folder) == kept and load_checkpoint(folder)[1] == {"n": 1}  # the new tensors removed


@pytest.mark.slow
def test_kill_9_after_a_mid_epoch_checkpoint_resumes_bit_identically(tmp_path):
    """`edge-lbp train --checkpoint-every 3`, killed with SIGKILL while its checkpoint is a mid-epoch one and
    resumed, ends bit-identical to an uninterrupted run without the option."""
    command, reference = _long_run(tmp_path)  # 4 batches per epoch: update 3 is mid-epoch
    folder = tmp_path / "killed"
    process = subprocess.Popen(command(folder, False, "--checkpoint-every", "3"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    position = None
    while process.poll() is None:
        if (folder / "checkpoint.json").exists():
            process.send_signal(signal.SIGSTOP)  # frozen while its checkpoint is read: no save can slip in
            position = json.loads((folder / "checkpoint.json").read_text())["metadata"]["position"]
            if position["batch"]:
                process.kill()
                break
            process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    process.wait()
    assert position and position["batch"] and process.returncode == -signal.SIGKILL, process.stderr.read()
    resumed = subprocess.run(command(folder, True, "--checkpoint-every", "3"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"batch {position['batch']}, update {position['updates']}" in resumed.stdout
    _assert_bit_identical(reference, folder)


# The long run, in a process of its own (its peak memory and descriptors are its own, not the test session's):
# every save is loaded right after it is written, and the folder listed.
LONG_RUN = """
import json, os, sys
from edge_lbp.checkpoint import load_checkpoint
from edge_lbp.data import open_dataset
from edge_lbp.trainer import Trainer

artifact, data, folder = sys.argv[1:]
trainer = Trainer(artifact, threads=1)
train = open_dataset(data, trainer.manifest)
save, saves, epochs = trainer.save, [], []


def save_and_load(where):
    save(where)
    saves.append({"updates": load_checkpoint(where)[1]["position"]["updates"], "files": sorted(os.listdir(where))})


def descriptors():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # listdir's own, closed by now
            pass
    return found


def resident_kib():  # [peak, current] resident set size in KiB
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return [int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])]


trainer.save = save_and_load
start = descriptors()
trainer.fit(train, epochs=20, batch_size=2, augment=False, checkpoint=folder, checkpoint_every=50, progress=False,
            callbacks=[lambda t, record: epochs.append(resident_kib())])
print(json.dumps({"start": start, "end": descriptors(), "epochs": epochs, "saves": saves, "updates": trainer.updates}))
"""


@pytest.mark.slow
def test_2000_steps_keep_memory_descriptors_and_checkpoints_steady(artifact, tmp_path):
    """2,000 steps of batch 2 (20 epochs of 100) with a checkpoint every 50 updates: the peak RSS after the first
    epoch is within 5 % of the end's, and so is the current RSS (the start's peak would hide a leak below it: 40 KB
    kept per step, 80 MB in all, moved the peak by 1.5 % and the current RSS by 45 %), the open descriptors at
    the end are those of the start, and each of the 40 checkpoints loads when written, the folder holding that
    one only."""
    data = write_task(tmp_path / "d.npz", train_per_class=25, val_per_class=1)  # 200 images
    folder = tmp_path / "c"
    run = subprocess.run([sys.executable, "-c", LONG_RUN, str(artifact), str(data), str(folder)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["updates"] == 2000 and len(report["epochs"]) == 20
    (peak_after_first, rss_after_first), (peak, rss) = report["epochs"][0], report["epochs"][-1]
    assert peak <= 1.05 * peak_after_first and rss <= 1.05 * rss_after_first, report["epochs"]
    assert report["end"] == report["start"]
    # A save at every 50th update: mid-epoch at 50, the epoch's own at 100 (not twice).
    assert [s["updates"] for s in report["saves"]] == list(range(50, 2001, 50))
    for save in report["saves"]:
        assert save["files"][:2] == [checkpoint.LOCK, checkpoint.METADATA] and len(save["files"]) == 3, save
    load_checkpoint(folder)
