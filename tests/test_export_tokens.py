"""An ONNX file whose input is a token sequence (batch, N, C): exported with --grid and --extra-tokens, trained."""
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
import onnx  # noqa: E402
import torch  # noqa: E402
import edge_lbp  # noqa: E402
from edge_lbp import cli  # noqa: E402
from edge_lbp.export import onnx_export  # noqa: E402
from engine_check import assert_parameters_match  # noqa: E402
from factory_models import TokenMixer  # noqa: E402
from test_export_cli import assert_one_error_line  # noqa: E402

TOKENS = (2 + 8 * 8, 16)


@pytest.fixture(scope="module")
def token_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tokens") / "tokens.onnx"
    onnx.save(onnx_export.export_forward(TokenMixer(), TOKENS), path)
    return path


def test_token_input_exports_with_its_grid_and_trains(capsys, tmp_path, token_onnx):
    art = tmp_path / "art"
    assert cli.main(["export", str(token_onnx), "-o", str(art), "--grid", "8x8", "--extra-tokens", "2"]) == 0
    assert "fc1.weight" in capsys.readouterr().out
    layers = json.loads((art / "manifest.json").read_text())["lbp"]["layers"]
    grids = {r["layer"]: (r["grid"], r["extra_tokens"]) for r in layers if r["status"] == "rewritten"}
    assert grids == {"fc1.weight": ([8, 8], 2), "fc2.weight": ([8, 8], 2)}
    numba, ort = edge_lbp.load(art, "numba"), edge_lbp.load(art, "ort")
    initial = numba.state.parameters()
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.standard_normal((3, *TOKENS)).astype(np.float32), rng.integers(0, 4, 3)
        assert numba.train_step(x, y) == pytest.approx(ort.train_step(x, y), rel=1e-4)
    assert_parameters_match(numba.state.parameters(), ort.state.parameters(), initial)
    np.testing.assert_allclose(numba.eval_step(x), ort.eval_step(x), rtol=1e-4, atol=1e-6)


def test_token_input_without_grid_is_one_error_line(capsys, tmp_path, token_onnx):
    code = cli.main(["export", str(token_onnx), "-o", str(tmp_path / "art")])
    assert_one_error_line(code, capsys.readouterr().err, "token sequence (batch, 66, 16)", "--grid HxW")
