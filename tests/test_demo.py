"""edge-lbp demo: the adaptation report, the board path (--artifact), and its errors."""
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_lbp.cli import demo, main
from edge_lbp.cli.demo import _class_count
from subprocess_guard import BLOCK_WORKSTATION


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("torch", reason="the export extra is not installed (this artifact is exported here)")
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed (exported here)")
    from edge_lbp.methods import export_model

    folder = tmp_path_factory.mktemp("demo") / "artifact"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


def test_demo_on_an_exported_artifact_reports_what_it_cost(artifact, capsys):
    assert main(["demo", "--artifact", str(artifact), "--epochs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for expected in ("a generated 8-class shapes-and-textures task", "1600 training / 400 validation images",
                     "accuracy before adaptation:", "epoch 1/1: train loss", "accuracy after 1 epochs:",
                     "step latency: median", "samples/s, 50 steps", "peak memory while training:", "energy:"):
        assert expected in out, expected


def test_demo_without_the_export_extra_needs_it_only_for_other_settings(tmp_path):
    code = BLOCK_WORKSTATION + "import sys; from edge_lbp.cli import main; sys.exit(main(['demo', '--block', '4']))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "edge-lbp: error: the packaged vit-c10 artifact was exported for 8 classes, --lbp lp-tri:4 --block auto; "
        "8 classes, --lbp lp-tri:4 --block 4 needs a new export, which needs the export extra"), result.stderr
    assert "--artifact DIR" in lines[0]


def _small_task(monkeypatch):
    # 8 + 2 images per class: two training steps, enough to check the report without a full run
    monkeypatch.setattr(demo, "TRAIN_PER_CLASS", 8)
    monkeypatch.setattr(demo, "VAL_PER_CLASS", 2)


def _artifact_line(out):
    return re.search(r"  export: (.*), (packaged|exported now), [\d.]+ s\n", out).groups()


def test_packaged_and_fresh_export_print_the_same_report(monkeypatch, capsys, export_extra):
    _small_task(monkeypatch)
    assert main(["demo", "--epochs", "1", "--threads", "1"]) == 0
    packaged_out = capsys.readouterr().out
    monkeypatch.setattr(demo.packaged, "matches", lambda *args: False)  # the workstation path: export afresh
    assert main(["demo", "--epochs", "1", "--threads", "1"]) == 0
    fresh_out = capsys.readouterr().out
    (figures, how), (fresh_figures, fresh_how) = _artifact_line(packaged_out), _artifact_line(fresh_out)
    assert (how, fresh_how) == ("packaged", "exported now")
    assert figures == fresh_figures == ("vit-c10 with --lbp lp-tri:4 --block auto (k4): 24 linear layers rewritten "
                                        "(their backward products 0.63x the FLOPs), 1,205,640 parameters")
    assert re.search(r"  kernels: (loaded from the Numba cache in|compiled \d+ Numba kernels in)", packaged_out)
    # the same weights, data and seed: the same accuracies, whichever way the artifact was made
    accuracy = re.compile(r"accuracy (?:before adaptation|after 1 epochs): [\d.]+%")
    assert accuracy.findall(packaged_out) == accuracy.findall(fresh_out) and len(accuracy.findall(fresh_out)) == 2


def test_class_count_of_folders_and_npz(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
    assert _class_count(tmp_path / "data") == 3
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 4, 1, 2]))
    assert _class_count(tmp_path / "d.npz") == 5
    with pytest.raises(ValueError, match="no such image folder"):
        _class_count(tmp_path / "missing")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(ValueError, match="one sub-folder per class"):
        _class_count(tmp_path / "one")


@pytest.mark.slow
def test_default_demo_adapts_the_bundled_backbone(tmp_path):
    """The README's main job, as a user runs it: no options, nothing from outside the package."""
    script = Path(sys.executable).with_name("edge-lbp")
    result = subprocess.run([str(script), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    before = float(re.search(r"accuracy before adaptation: ([\d.]+)%", result.stdout).group(1))
    after = float(re.search(r"accuracy after \d+ epochs: ([\d.]+)%", result.stdout).group(1))
    assert after > before + 30, result.stdout
    assert "linear layers rewritten" in result.stdout


def test_demo_adapts_the_bundled_backbone_to_a_users_image_folder(tmp_path, capsys):
    pytest.importorskip("torch", reason="the export extra is not installed (the demo exports the backbone)")
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed (the demo exports)")
    from PIL import Image

    from edge_lbp.synthetic import draw

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for kind in ("disc", "stripes", "cross"):
            folder = tmp_path / "photos" / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(draw(kind, rng)).save(folder / f"{i}.png")
    args = ["demo", "--data", str(tmp_path / "photos"), "--block", "4", "--epochs", "1", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"your data in {tmp_path / 'photos'}" in out
    # 8x8 grid in 4x4 blocks: CLS + 4 blocks x 10 lp-tri:4 bases = 41 of 65 token rows in every backward product
    assert f"--lbp lp-tri:4 --block 4: 24 linear layers rewritten (their backward products {41 / 65:.2f}x" in out
    assert "36 training / 12 validation images, 3 classes (cross, disc, stripes)" in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_spinner_only_on_a_terminal_and_cleared_after(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with demo._spinner("  compiling"):
        time.sleep(0.6)
    frames = sys.stderr.getvalue()
    assert frames.startswith("\r  compiling | 0 s\r  compiling / 0 s") and frames.endswith("\r\033[K")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: nothing
    with demo._spinner("  compiling"):
        time.sleep(0.3)
    assert sys.stderr.getvalue() == ""
