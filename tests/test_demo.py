"""edge-lbp demo: the adaptation report, the board path (--artifact), and its errors."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_lbp.cli import main
from edge_lbp.cli.demo import _class_count
from subprocess_guard import BLOCK_WORKSTATION


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("torch", reason="the export extra is not installed (this artifact is exported here)")
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed (exported here)")
    from edge_lbp.export.exporter import export_model

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


def test_demo_without_the_export_extra_points_to_artifact(tmp_path):
    code = BLOCK_WORKSTATION + "import sys; from edge_lbp.cli import main; sys.exit(main(['demo']))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("edge-lbp: error: the demo exports the bundled backbone, which needs the "
                                    "export extra")
    assert "--artifact DIR" in result.stderr and "Traceback" not in result.stderr


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
