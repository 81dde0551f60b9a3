"""Model families and the forward ONNX export (torch vs ONNX Runtime inference, graph passes, loading)."""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edge_lbp.core import ops  # noqa: E402
from edge_lbp.export import models, onnx_export  # noqa: E402

TINY = ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]


def _export(name):
    torch.manual_seed(0)
    module = models.build_model(name)
    cfg = module.config
    return module, onnx_export.export_forward(module, (cfg.in_chans, cfg.img_size, cfg.img_size))


@pytest.mark.parametrize("name", TINY)
def test_forward_onnx_matches_torch(name):
    module, forward = _export(name)
    cfg = module.config
    x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size)  # batch 3 != traced batch 2: the batch is dynamic
    module.train()  # the graph is exported in training mode (BatchNormalization on batch statistics)
    with torch.no_grad():
        expected = module(x).numpy()
    session = ort.InferenceSession(forward.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: x.numpy()})
    assert logits.shape == (3, cfg.num_classes)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert forward.ir_version <= ops.MAX_IR_VERSION
    assert forward.opset_import[0].version == onnx_export.OPSET


@pytest.mark.parametrize("name", TINY)
def test_no_multihead_attention_and_timm_style_qkv(name):
    module = models.build_model(name)
    kinds = {type(m) for m in module.modules()}
    assert torch.nn.MultiheadAttention not in kinds
    assert models.Attention in kinds


def test_presets_are_small_and_configurable():
    for name in TINY:
        module = models.build_model(name)
        assert module.config.img_size == 32
        assert sum(p.numel() for p in module.parameters()) < 500_000
    wide = models.build_model("vit-tiny", dim=96, depth=3, num_classes=7)
    assert len(wide.blocks) == 3 and wide.head.out_features == 7 and wide.head.in_features == 96
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("resnet-50")


def test_vit_b16_has_the_real_shape():
    with torch.device("meta"):
        module = models.build_model("vit-b16")
    cfg = module.config
    assert (cfg.depth, cfg.dim, cfg.heads, cfg.img_size, cfg.patch_size) == (12, 768, 12, 224, 16)
    assert module.grid == (14, 14) and module.extra_tokens == 1
    assert sum(p.numel() for p in module.parameters()) == 86_567_656  # timm's vit_base_patch16_224


@pytest.mark.parametrize("name,dim,heads,params", [("deit-ti16", 192, 3, 5_910_800), ("deit-s16", 384, 6, 22_436_432)])
def test_deit_presets_have_the_real_shapes(name, dim, heads, params):
    with torch.device("meta"):
        module = models.build_model(name)
    cfg = module.config
    assert (cfg.depth, cfg.dim, cfg.heads, cfg.img_size, cfg.patch_size) == (12, dim, heads, 224, 16)
    assert module.grid == (14, 14) and module.extra_tokens == 2
    # timm's deit_{tiny,small}_distilled_patch16_224
    assert sum(p.numel() for p in module.parameters()) == params


def test_deit_has_two_extra_tokens_and_averages_two_heads():
    module = models.build_model("deit-tiny")
    assert module.extra_tokens == 2 and module.pos_embed.shape[1] == 2 + 8 * 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        module.head_dist.weight.copy_(module.head.weight)
        module.head_dist.bias.copy_(module.head.bias)
        same = module(x)
        module.head_dist.bias.add_(2.0)
        shifted = module(x)
    torch.testing.assert_close(shifted, same + 1.0)


def test_swin_attention_runs_on_windows():
    module = models.build_model("swin-tiny")
    seen = []
    module.blocks[0].attn.qkv.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    module(torch.randn(2, 3, 32, 32))
    # 32 px / patch 2 = 16x16 tokens, 8x8 windows -> batch 2 x 4 windows of 64 tokens
    assert seen == [(8, 64, 48)]
    assert [blk.shift for blk in module.blocks] == [0, 4, 0, 0]


def test_efficientformer_mlp_is_1x1_conv_on_4d_maps():
    module = models.build_model("efficientformer-tiny")
    meta4d = [m for m in module.modules() if isinstance(m, models.Meta4D)]
    assert meta4d and all(m.fc1.kernel_size == (1, 1) for m in meta4d)
    pool = meta4d[0].pool
    x = torch.randn(2, meta4d[0].fc1.in_channels, 8, 8)
    expected = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(pool(x), expected)


def test_layernorm_pass_adds_mean_and_invstddev_without_touching_input():
    _, forward = _export("vit-tiny")
    norms = [n for n in forward.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(len(n.output) == 3 and all(n.output) for n in norms)
    raw = onnx.ModelProto()
    raw.CopyFrom(forward)
    for node in raw.graph.node:
        if node.op_type == "LayerNormalization":
            del node.output[1:]
    fixed = onnx_export.add_layernorm_stat_outputs(raw)
    assert [len(n.output) for n in raw.graph.node if n.op_type == "LayerNormalization"] == [1] * len(norms)
    assert fixed == forward
    assert onnx_export.add_layernorm_stat_outputs(fixed) == fixed


def test_ir_version_is_capped():
    _, forward = _export("vit-tiny")
    newer = onnx.ModelProto()
    newer.CopyFrom(forward)
    newer.ir_version = 11
    assert onnx_export.cap_ir_version(newer).ir_version == 10
    assert newer.ir_version == 11
    assert onnx_export.cap_ir_version(forward).ir_version == forward.ir_version


def test_load_onnx_roundtrip_and_clear_error(tmp_path):
    _, forward = _export("vit-tiny")
    path = tmp_path / "model.onnx"
    onnx.save(forward, path)
    assert onnx_export.load_onnx(path) == forward
    for junk in (b"this is not a protobuf \xff\xfe", b""):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(junk)
        with pytest.raises(ValueError) as err:
            onnx_export.load_onnx(bad)
        assert "not an ONNX model" in str(err.value) and str(bad) in str(err.value)
        assert "\n" not in str(err.value)
