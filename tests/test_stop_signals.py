"""A service manager's SIGTERM stops every long-running command as Ctrl-C does (one line, exit status 143, nothing
left behind), and the exit statuses are the docs' table. (`train`'s SIGTERM loop is in test_reliability.py,
`fleet local`'s in test_fleet.py.)"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_lbp.status import ExitStatus, Stopped, status_of

DOCS = Path(__file__).resolve().parents[1] / "docs"


def handles_sigterm(pid) -> bool:
    """Whether the process has installed its SIGTERM handler yet (before, SIGTERM would end Python at once)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _wait_for_handler(process) -> None:
    while process.poll() is None and not handles_sigterm(process.pid):
        time.sleep(0.005)


def test_the_docs_table_lists_every_exit_status():
    text = (DOCS / "device.md").read_text()
    rows = re.findall(r"^\| `(\d+)` \| (\w+) \|", text, re.M)
    assert [(int(code), name) for code, name in rows] == [(s.value, s.name) for s in ExitStatus]


@pytest.mark.parametrize("exc, status", [
    (KeyboardInterrupt(), 130), (Stopped(signal.SIGTERM), 143), (ValueError("bad"), 2), (MemoryError(), 2),
    (FileNotFoundError("x"), 2), (OSError(28, "No space left on device"), 1), (RuntimeError("bug"), 1),
])
def test_each_ending_has_its_status(exc, status):
    assert status_of(exc) == status


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("torch", reason="the export extra is not installed (the test artifact is exported here)")
    from edge_lbp.methods import export_model

    folder = tmp_path_factory.mktemp("stop") / "vit-tiny"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


def test_train_saves_at_the_update_after_sigterm_and_exits_143(artifact, tmp_path, monkeypatch, capsys):
    from edge_lbp.checkpoint import load_checkpoint
    from edge_lbp.cli import main
    from edge_lbp.trainer import Trainer
    from test_data import write_folder

    images = write_folder(tmp_path / "images", per_class=4)
    step = Trainer.step

    def step_then_sigterm(self, x, y):
        if self.updates == 2:  # the service manager's stop arrives during the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, x, y)

    monkeypatch.setattr(Trainer, "step", step_then_sigterm)
    folder = tmp_path / "ckpt"
    code = main(["train", str(artifact), "--data", str(images), "--epochs", "2", "--batch-size", "2", "--threads",
                 "1", "--checkpoint", str(folder)])
    assert code == ExitStatus.TERMINATED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"edge-lbp: stopped by SIGTERM in epoch 1 after batch 3; saved to {folder}, continue with --resume")
    position = load_checkpoint(folder)[1]["position"]
    assert (position["epoch"], position["batch"], position["updates"]) == (0, 3, 3)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main put Python's default back


def test_profile_stops_on_sigterm_with_one_line(artifact, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "edge_lbp", "profile", str(artifact), "--steps",
                                "100000", "--warmup", "0", "--threads", "1", "--out", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_handler(process)
    time.sleep(2)  # into the profiled steps
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == ExitStatus.TERMINATED, err
    assert err == "edge-lbp: stopped by SIGTERM\n" and out == ""
    assert not list((tmp_path / "out").glob("*")), "a partial report was written"


@pytest.mark.slow
def test_demo_stops_on_sigterm_during_training_and_cleans_up(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "edge_lbp", "demo", "--epochs", "3", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "accuracy before adaptation" in line:
            time.sleep(2)  # training now
            process.send_signal(signal.SIGTERM)
            break
    rest, err = process.communicate(timeout=300)
    report = "".join(lines) + rest + err
    assert process.returncode == ExitStatus.TERMINATED, report
    assert err.strip().splitlines()[-1] == "edge-lbp: stopped by SIGTERM" and "Traceback" not in err, report
    assert "total" not in rest, report
    assert not list(tmp_path.glob("edge_lbp_demo_*")), "the demo's temporary folder was left behind"


def test_a_stop_during_any_kernel_is_the_stop(artifact):
    """A stop signal whose handler runs while a parallel Numba kernel returns reaches the engine as SystemErrors
    wrapping the stop (seen in about a third of stops during a step): each of 60 stops at random moments of
    training steps is the stop, never a failed node."""
    import edge_lbp
    from edge_lbp.status import raise_stopped

    session = edge_lbp.load(artifact, "numba", threads=2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 8)
    session.train_step(x, y)
    previous = signal.signal(signal.SIGALRM, raise_stopped)
    try:
        for _ in range(60):
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.03))
            with pytest.raises(Stopped):
                while True:
                    session.train_step(x, y)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
