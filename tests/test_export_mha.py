"""``nn.MultiheadAttention`` rewritten into q/k/v linear layers: the same function, and then it trains with LBP."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
import torch  # noqa: E402
from torch import nn  # noqa: E402
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.export.mha import LinearAttention, replace_multihead_attention  # noqa: E402
from engine_check import assert_parameters_match  # noqa: E402
from factory_models import mha_vit  # noqa: E402


def _inputs(batch_first, n=5, s=7, dim=8, kdim=8, vdim=8):
    g = torch.Generator().manual_seed(0)

    def t(length, width):
        return torch.randn((2, length, width) if batch_first else (length, 2, width), generator=g)

    return t(n, dim), t(s, kdim), t(s, vdim)


MASKS = {
    "none": {},
    "bool-attn": {"attn_mask": torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.7},
    "float-attn-3d": {"attn_mask": torch.randn(2 * 2, 5, 7, generator=torch.Generator().manual_seed(2))},
    "padding": {"key_padding_mask": torch.tensor([[False] * 5 + [True] * 2, [False] * 7])},
    "per-head-weights": {"average_attn_weights": False},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
@pytest.mark.parametrize("mask", list(MASKS))
def test_rewritten_attention_equals_multihead_attention(batch_first, kdim, mask):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    with torch.no_grad():
        mha.out_proj.bias.normal_()  # torch starts the biases at 0, which would hide a dropped bias
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
    q, k, v = _inputs(batch_first, kdim=kdim or 8, vdim=kdim or 8)
    with torch.no_grad():
        want = mha(q, k, v, **MASKS[mask])
        got = LinearAttention(mha).eval()(q, k, v, **MASKS[mask])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_replacement_leaves_the_callers_model_alone():
    model = mha_vit()
    x = torch.randn(2, 3, 32, 32)
    rewritten, count = replace_multihead_attention(model)
    assert count == 2 and rewritten is not model
    assert isinstance(model.blocks[0].attn, nn.MultiheadAttention)
    assert isinstance(rewritten.blocks[1].attn, LinearAttention)
    with torch.no_grad():
        torch.testing.assert_close(rewritten.eval()(x), model.eval()(x), rtol=1e-6, atol=1e-6)
    assert replace_multihead_attention(nn.Linear(2, 2))[1] == 0


def test_multihead_attention_vit_trains_with_lbp(tmp_path):
    report = export_model(mha_vit(), tmp_path / "art", lbp="lp-tri:4", lr=0.01, input_shape=(3, 32, 32))
    rewritten = {r["layer"]: (tuple(r["grid"]), r["extra_tokens"]) for r in report.layers if r["status"] == "rewritten"}
    for block in (0, 1):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert rewritten[f"blocks.{block}.attn.{proj}.weight"] == ((8, 8), 1)
    numba, ort = edge_lbp.load(tmp_path / "art", "numba"), edge_lbp.load(tmp_path / "art", "ort")
    initial = numba.state.parameters()
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.standard_normal((3, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 3)
        assert numba.train_step(x, y) == pytest.approx(ort.train_step(x, y), rel=1e-4)
    assert_parameters_match(numba.state.parameters(), ort.state.parameters(), initial)
