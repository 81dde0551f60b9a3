"""Every exported family's training graph with the engine's fusions (``runtime.passes.training_passes``) against
the same graph with only the passes that fuse nothing the numerics see (``fold_transpose_into_gemm``,
``accumulate_in_place``): losses and gradients over a few SGD steps to 1e-5."""
import numpy as np
import pytest

import edge_lbp
from edge_lbp.core import ops
from edge_lbp.runtime import numba_session, passes
from engine_check import ZERO_GRADIENT

FUSED_OPS = (ops.BIAS_GELU_GRAD_SUM, ops.MATMUL_ADD)
NORM_OPS = (ops.MATMUL_ADD_LAYER_NORM, ops.LAYER_NORM_GRAD_ADD)  # runtime.norm_passes


def _unfused(model):
    return passes.accumulate_in_place(passes.fold_transpose_into_gemm(model))


def _hf(name):
    def build():
        from test_export_hf import build

        return build(name)

    return build


def _mha_vit():
    from factory_models import mha_vit

    return mha_vit()


# family: (model, input shape, classes, the fused ops its graph must have)
FAMILIES = {"vit-tiny": ("vit-tiny", (3, 32, 32), 10, FUSED_OPS + NORM_OPS),
            "deit-tiny": ("deit-tiny", (3, 32, 32), 10, FUSED_OPS + NORM_OPS),
            "swin-tiny": ("swin-tiny", (3, 32, 32), 10, FUSED_OPS + NORM_OPS),
            "efficientformer-tiny": ("efficientformer-tiny", (3, 32, 32), 10, FUSED_OPS),
            "hf-vit": (_hf("vit"), (3, 32, 32), 5, FUSED_OPS + NORM_OPS),
            "hf-swin": (_hf("swin"), (3, 32, 32), 5, FUSED_OPS + NORM_OPS),
            "torchvision-mha": (_mha_vit, (3, 32, 32), 10, FUSED_OPS + NORM_OPS)}


def _steps(folder, shape, classes, steps=3):
    """Losses and gradients of ``steps`` SGD steps of the numba engine on fixed random batches."""
    session = edge_lbp.load(folder, "numba", threads=1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((3, *shape)).astype(np.float32)
        y = rng.integers(0, classes, 3)
        loss = session.train_step(x, y)
        out.append((loss, {k: v.copy() for k, v in session.gradients().items()}))
    return session, out


@pytest.mark.parametrize("family, lbp", [(family, "none") for family in FAMILIES] + [("vit-tiny", "lp-tri:4")])
def test_fused_training_graph_matches_the_unfused_graph(tmp_path, monkeypatch, family, lbp):
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
    source, shape, classes, expected = FAMILIES[family]
    edge_lbp.export_model(source() if callable(source) else source, tmp_path, lbp=lbp, optimizer="sgd", lr=0.05,
                          input_shape=shape)
    fused_session, fused = _steps(tmp_path, shape, classes)
    assert {s.op_type for s in fused_session.training.steps} >= set(expected)
    monkeypatch.setattr(numba_session, "training_passes", _unfused)
    plain_session, plain = _steps(tmp_path, shape, classes)
    assert not {s.op_type for s in plain_session.training.steps} & set(FUSED_OPS + NORM_OPS)
    for (loss, grads), (want_loss, want_grads) in zip(fused, plain):
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
        assert grads.keys() == want_grads.keys()
        largest = max(np.abs(g).max() for g in want_grads.values())
        for name, grad in grads.items():
            want = want_grads[name]
            # An exactly-zero gradient is rounding noise in both graphs: bounded against the step's largest.
            scale = largest if name.endswith(ZERO_GRADIENT) else np.abs(want).max()
            np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
