"""``edge-lbp export`` and ``export_model``: model sources, the report, and one-line errors for bad inputs."""
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

from edge_lbp import cli  # noqa: E402
from edge_lbp.export import models, onnx_export  # noqa: E402
from edge_lbp.core import artifact  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402

TESTS = Path(__file__).resolve().parent


def run_cli(capsys, *args):
    code = cli.main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-lbp: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_exports_and_prints_the_report(capsys, tmp_path):
    code, out, err = run_cli(capsys, "vit-tiny", "-o", tmp_path / "art", "--lbp", "lp-tri:4,blocks.0.*=none",
                             "--method", "all", "--optimizer", "sgd", "--lr", "0.05")
    assert code == 0 and err == ""
    manifest = artifact.verify_artifact(tmp_path / "art")
    assert manifest["optimizer"]["name"] == "sgd" and manifest["optimizer"]["lr"] == 0.05
    assert "LBP rewritten: 4 layer(s)" in out
    fc1 = next(line for line in out.splitlines() if "blocks.1.mlp.fc1.weight" in line)
    assert "grid 8x8+1 " in fc1 and " k4 " in fc1 and "r=10" in fc1  # --block auto: 4 blocks of 4x4
    assert "65 -> 41 rows" in fc1 and f"{41 / 65:.2f}x backward FLOPs" in fc1
    assert "left exact: 5 layer(s)" in out and "blocks.0.attn.qkv.weight" in out and "--lbp none" in out
    assert "patch_embed.proj.weight" in out  # a 4x4 stride-4 convolution: not a per-token linear layer
    total = sum(p.numel() for p in models.build_model("vit-tiny").parameters())
    assert f"parameters: {total:,} trainable + 0 frozen = {total:,}" in out
    size = sum(p.stat().st_size for p in (tmp_path / "art").rglob("*") if p.is_file())
    assert f"({size:,} bytes)" in out


def test_cli_block_sets_the_wht_block_side(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "vit-tiny", "-o", tmp_path / "art", "--block", "8")
    assert code == 0
    fc1 = next(line for line in out.splitlines() if "blocks.1.mlp.fc1.weight" in line)
    # CLS + 1 block of 8x8 x 10 bases
    assert "grid 8x8+1 " in fc1 and " k8 " in fc1
    assert "65 -> 11 rows" in fc1 and "0.17x backward FLOPs" in fc1 and "block auto" not in out
    layers = json.loads((tmp_path / "art" / "manifest.json").read_text())["lbp"]["layers"]
    assert {r["block"] for r in layers if r["status"] == "rewritten"} == {8}


def test_cli_block_auto_keeps_four_blocks_and_says_why(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "vit-tiny", "-o", tmp_path / "art", "--block", "auto")
    assert code == 0
    assert "block auto: k4 on the 8x8 grid, 4 blocks per image (k8 would leave 1)" in out
    fc1 = next(line for line in out.splitlines() if "blocks.1.mlp.fc1.weight" in line)
    assert " k4 " in fc1 and "65 -> 41 rows" in fc1
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["lbp"]["block"] == "auto"


@pytest.mark.parametrize("grid, spec, block", [
    ((14, 14), "lp-tri:4", 8),  # ViT-B/16 at 224 px: padded to 16x16, 4 blocks of 8
    ((8, 8), "lp-tri:4", 4),
    ((7, 7), "lp-tri:4", 4),  # a Swin window: 1 block of 8 or 4; the smaller one has fewer bases to waste
    ((4, 4), "lp-tri:4", 4),  # k2 has 4 bases, fewer than r=10: it would keep everything
    ((4, 4), "lp-tri:2", 2),
    ((8, 8), "energy:10", 4),
    ((4, 4), "energy:10", 4),  # energy:10 does not fit a 2x2 block
    ((56, 56), "lp-tri:6", 8),
])
def test_auto_block_is_the_largest_with_four_blocks_that_still_drops_bases(grid, spec, block):
    from edge_lbp.export.lbp_rewrite import auto_block

    assert auto_block(grid, spec)[0] == block


def test_cli_grid_and_input_shape(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "swin-tiny", "-o", tmp_path / "art", "--input-shape", "3,32,32",
                           "--num-classes", "7", "--grid", "8x8", "--extra-tokens", "0")
    assert code == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["model"]["num_classes"] == 7 and manifest["outputs"][0]["shape"] == ["batch", 7]
    assert manifest["lbp"]["grid"] == [8, 8] and manifest["lbp"]["extra_tokens"] == 0
    assert any(r["grid"] == [8, 8] for r in manifest["lbp"]["layers"])


def test_factory_model(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    code, out, err = run_cli(capsys, "factory_models:tiny_mixer", "-o", tmp_path / "art",
                             "--input-shape", "3,16,16", "--num-classes", "5")
    assert code == 0, err
    manifest = artifact.verify_artifact(tmp_path / "art")
    assert manifest["model"] == {"source": "factory_models:tiny_mixer", "kind": "factory", "family": None,
                                 "input_shape": [3, 16, 16], "num_classes": 5}
    assert "fc.weight" in out
    rows = {r["layer"]: r for r in manifest["lbp"]["layers"]}
    assert rows["fc.weight"]["status"] == "rewritten" and rows["fc.weight"]["grid"] == [8, 8]


def test_onnx_file_and_module_sources(tmp_path):
    torch.manual_seed(0)
    module = models.build_model("efficientformer-tiny")
    path = tmp_path / "ef.onnx"
    onnx.save(onnx_export.export_forward(module, (3, 32, 32)), path)
    from_file = export_model(path, tmp_path / "a", method="bias")
    from_module = export_model(module, tmp_path / "b", method="bias")
    assert from_file.manifest["model"]["kind"] == "onnx" and from_file.manifest["model"]["input_shape"] == [3, 32, 32]
    assert from_module.manifest["model"]["kind"] == "module" and from_module.manifest["model"]["family"] == (
        "efficientformer")
    assert from_file.manifest["trainable"] == from_module.manifest["trainable"]
    assert (tmp_path / "a" / "params.safetensors").read_bytes() == (tmp_path / "b" / "params.safetensors").read_bytes()


def test_progress_lines_and_report_without_rewritable_layers(tmp_path):
    lines = []
    report = export_model("vit-tiny", tmp_path / "art", method="head", progress=lines.append)
    assert [line.split()[0] for line in lines] == ["forward", "training", "LBP", "writing"]
    assert "nothing to rewrite" in report.format() and "left exact" not in report.format()


def _hardswish_onnx(path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Hardswish(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 4 * 4, 3))
    onnx.save(onnx_export.export_forward(module, (3, 4, 4)), path)
    return path


@pytest.mark.parametrize("make_args,fragments", [
    (lambda d: [(d / "notes.onnx").write_text("not a model") and d / "notes.onnx"],
     ["notes.onnx", "not an ONNX model"]),
    (lambda d: [_hardswish_onnx(d / "hs.onnx")], ["'/1/HardSwish'", "op HardSwish"]),
    (lambda d: ["vit-tiny", "--grid", "5x5", "--extra-tokens", "0"], ["--grid 5x5", "fits no"]),
    (lambda d: ["vit-tiny", "--grid", "5x5"], ["--grid 5x5", "fits no"]),
    (lambda d: [d / "missing.onnx"], ["missing.onnx", "no such file"]),
    (lambda d: ["vit-huge"], ["unknown model 'vit-huge'"]),
    (lambda d: ["vit-tiny", "--lbp", "lp-tri:x"], ["lp-tri:x"]),
    (lambda d: ["vit-tiny", "--method", "some"], ["unknown method 'some'"]),
    (lambda d: ["vit-tiny", "--train", "some"], ["unknown method 'some'"]),  # the deprecated spelling too
    (lambda d: ["vit-tiny", "--input-shape", "3,32"], ["'3,32'", "C,H,W"]),
    (lambda d: ["vit-tiny", "--input-shape", "3,32,16"], ["square"]),
    (lambda d: ["vit-tiny", "--lr", "0"], ["--lr", "must be > 0"]),
    (lambda d: ["vit-tiny", "--extra-tokens", "1"], ["--extra-tokens", "--grid"]),
    (lambda d: ["no_such_module_xyz:make"], ["no_such_module_xyz:make"]),
    (lambda d: ["factory_models:tiny_mixer"], ["input shape", "--input-shape"]),
    (lambda d: [_hardswish_onnx(d / "hs.onnx"), "--num-classes", "4"], ["3 classes, not 4"]),
    (lambda d: ["factory_models:fixed_classes", "--num-classes", "4", "--input-shape", "3,8,8"],
     ["'factory_models:fixed_classes' cannot be called with --num-classes", "num_classes"]),
    (lambda d: [f"hf:{d}"], ["hf:/", "no config.json"]),
    (lambda d: [(d / "config.json").write_text("{}") and f"hf:{d}"], ["no model.safetensors", "pickled"]),
], ids=["not-onnx", "no-gradient", "grid-5x5-e0", "grid-5x5", "missing-file", "unknown-model", "bad-lbp",
        "bad-method", "bad-train", "short-shape", "non-square", "zero-lr", "extra-no-grid", "no-module", "factory-no-shape",
        "class-mismatch", "factory-signature", "hf-no-config", "hf-no-weights"])
def test_bad_inputs_end_with_one_error_line(capsys, tmp_path, monkeypatch, make_args, fragments):
    monkeypatch.syspath_prepend(str(TESTS))
    args = make_args(tmp_path)
    code, out, err = run_cli(capsys, args[0], "-o", tmp_path / "art", *args[1:])
    assert_one_error_line(code, err, *fragments)
    assert out == "" and not (tmp_path / "art").exists()


def test_console_script_error_has_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("edge-lbp")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf")
    result = subprocess.run([str(script), "export", str(bad), "-o", str(tmp_path / "art")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_error_line(result.returncode, result.stderr, "bad.onnx", "not an ONNX model")


def test_help_lists_export(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--lbp", "--train", "--optimizer", "--lr", "--input-shape", "--num-classes", "--grid",
                   "--extra-tokens", "-o DIR"):
        assert option in usage
    assert cli.main([]) == 0 and "export" in capsys.readouterr().out
