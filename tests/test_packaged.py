"""The demo's packaged artifact: it verifies, it equals a fresh export by its own script, and it adds no second copy
of the backbone's weights to the package."""
import json
import subprocess
import sys

import pytest

from edge_lbp.core import packaged
from edge_lbp.core.artifact import ArtifactError, verify_artifact


def test_assembled_artifact_passes_the_verifier_and_trains_the_demo_task(tmp_path):
    folder = packaged.assemble(tmp_path / "artifact")
    manifest = verify_artifact(folder)
    assert manifest["model"]["num_classes"] == packaged.CLASSES
    assert manifest["lbp"]["spec"] == packaged.SETTINGS["lbp"] and manifest["lbp"]["block"] == packaged.SETTINGS["block"]
    assert manifest["optimizer"]["name"] == "adamw" and manifest["optimizer"]["lr"] == packaged.SETTINGS["lr"]
    assert manifest["trainable_set"] == "all" and "ort_checkpoint" not in manifest
    assert sum(r["status"] == "rewritten" for r in manifest["lbp"]["layers"]) == 24


def test_package_carries_only_the_head_beside_the_backbone():
    files = [p for p in (packaged.assets() / packaged.FOLDER).rglob("*") if p.is_file()]
    files.append(packaged.assets() / packaged.HEAD_FILE)
    assert sorted(p.name for p in files) == ["eval_model.onnx", "manifest.json", "optimizer_model.onnx",
                                             "training_model.onnx", packaged.HEAD_FILE]
    assert sum(p.stat().st_size for p in files) < 400_000  # the backbone alone is 4.8 MB


def test_a_tampered_head_fails_the_checksum(tmp_path, monkeypatch):
    import shutil

    from safetensors.numpy import load_file, save_file

    assets = tmp_path / "assets"
    assets.mkdir()
    for name in (packaged.BACKBONE_FILE, packaged.HEAD_FILE):
        (assets / name).write_bytes((packaged.assets() / name).read_bytes())
    (assets / packaged.FOLDER).mkdir()
    for path in (packaged.assets() / packaged.FOLDER).iterdir():  # no metadata: qemu-user cannot redirect xattrs
        shutil.copyfile(path, assets / packaged.FOLDER / path.name)
    head = load_file(str(assets / packaged.HEAD_FILE))
    head["head.bias"][0] += 1
    save_file(head, str(assets / packaged.HEAD_FILE))
    monkeypatch.setattr(packaged, "assets", lambda: assets)
    with pytest.raises(ArtifactError, match="params.safetensors: checksum mismatch"):
        packaged.assemble(tmp_path / "artifact")


def test_packaged_settings_are_what_the_demo_and_exporter_default_to():
    from edge_lbp.core import defaults
    from edge_lbp.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert packaged.matches(packaged.CLASSES, args.lbp, args.block)
    assert (packaged.SETTINGS["lbp"], packaged.SETTINGS["block"]) == (defaults.SELECTION, defaults.EXPORT_BLOCK)
    assert not packaged.matches(packaged.CLASSES, args.lbp, 4) and not packaged.matches(3, args.lbp, args.block)


def test_packaged_files_equal_a_fresh_export(tmp_path):
    """Reproducible from its script: graphs and head byte for byte, the manifest in every field but the time it was
    written (so the checksum of the rebuilt parameters is the same too)."""
    pytest.importorskip("torch", reason="re-exporting needs the export extra")
    # The script as a user runs it, in its own process: ONNX Runtime's loss block numbers its node names with a
    # process-wide counter, so an export after others in the same process names the loss output differently.
    result = subprocess.run([sys.executable, "-m", "edge_lbp.bundle", "--assets", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = tmp_path / packaged.FOLDER
    shipped = packaged.assets() / packaged.FOLDER
    assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for path in fresh.iterdir():
        if path.name != "manifest.json":
            assert path.read_bytes() == (shipped / path.name).read_bytes(), f"{path.name} differs: rerun " \
                                                                               "python -m edge_lbp.bundle"
    assert (tmp_path / packaged.HEAD_FILE).read_bytes() == (packaged.assets() / packaged.HEAD_FILE).read_bytes()
    ours, theirs = (json.loads((folder / "manifest.json").read_text()) for folder in (fresh, shipped))
    assert ours.pop("created") and theirs.pop("created")
    assert ours == theirs, "the manifest differs from a fresh export: rerun python -m edge_lbp.bundle"
