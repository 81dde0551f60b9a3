"""DINOv2 and SigLIP's vision tower as users bring them (``hf:PATH``, tiny random configurations), their training
graphs built by our gradient builder: forward logits, loss and every parameter gradient on the numba engine
against torch autograd on the same module (ORT-training cannot run DINOv2's graph: its ResizeGrad is CUDA-only),
training that reduces the loss, and the LBP rewrite finding their linear layers; our SigLIP graph on ONNX Runtime."""
import numpy as np
import onnx
import pytest

transformers = pytest.importorskip("transformers", reason="transformers (a test dependency) is not installed")
torch = pytest.importorskip("torch", reason="the export extra is not installed")
import edge_lbp  # noqa: E402
from edge_lbp.core import ops  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from engine_check import ZERO_GRADIENT, compare_engines, exceeded  # noqa: E402

CLASSES, BATCH, STEPS = 5, 3, 5
TOWER = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
# DINOv2 is exported at 48 px for its 32-px configuration: interpolate_pos_encoding resizes the 8x8 grid of
# position embeddings to 12x12 (bicubic), so the Resize and its gradient do real work.
MODELS = {
    "dinov2": (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        **TOWER, mlp_ratio=2, num_labels=CLASSES)), (3, 48, 48), {((12, 12), 1): 12}),
    "siglip": (lambda: transformers.SiglipForImageClassification(transformers.SiglipConfig(
        vision_config=dict(**TOWER, intermediate_size=64), num_labels=CLASSES)), (3, 32, 32), {((8, 8), 0): 12}),
}


def _export(name, tmp_path, lbp, **options):
    factory, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    model.save_pretrained(tmp_path / "ckpt")
    # The input shape comes from the checkpoint's config unless given (DINOv2's larger one).
    given = shape if name == "dinov2" else None
    report = export_model(f"hf:{tmp_path / 'ckpt'}", tmp_path / "art", lbp=lbp, gradients="own", lr=0.01,
                          input_shape=given, **options)
    assert report.manifest["model"]["family"] == name and report.manifest["model"]["input_shape"] == list(shape)
    return model, report, shape


def _batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, *shape)).astype(np.float32), rng.integers(0, CLASSES, BATCH)


def _close(got, want, rtol=1e-5, name=""):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(float(np.abs(want).max()), 1e-6),
                               err_msg=name)


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_vision_model_trains_on_numba_as_torch(tmp_path, name, export_extra):
    model, report, shape = _export(name, tmp_path, "none")
    training = onnx.load(str(tmp_path / "art" / "training_model.onnx"))
    emitted = {(n.domain, n.op_type) for n in training.graph.node}
    if name == "dinov2":
        assert (ops.DOMAIN, ops.RESIZE_GRAD) in emitted
        with pytest.raises(ValueError, match=r"Resize_Grad.*\(edge_lbp::ResizeGrad\) runs on the numba engine only"):
            edge_lbp.load(tmp_path / "art", "ort")
    else:
        assert ("com.microsoft", "TanhGrad") in emitted  # the tanh-form GELU
    session = edge_lbp.load(tmp_path / "art", "numba")
    x, y = _batch(shape)
    with torch.no_grad():
        _close(session.eval_step(x), model.eval()(torch.from_numpy(x)).logits.numpy())
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)).logits, torch.from_numpy(y))
    loss.backward()
    ref = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    _close(session.forward_backward(x, y), loss.item())
    grads = session.gradients()
    assert set(grads) == set(ref) == set(report.manifest["trainable"])
    for n, grad in grads.items():
        if n.endswith(ZERO_GRADIENT):  # exactly 0 (softmax ignores a shift): rounding noise in both
            assert np.abs(grad).max() < 1e-6 and np.abs(ref[n]).max() < 1e-6, n
        else:
            _close(grad, ref[n], name=n)
    losses = [session.train_step(x, y) for _ in range(STEPS)]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", list(MODELS))
def test_lbp_rewrite_applies_to_hf_vision_model(tmp_path, name, export_extra):
    """The export default (lp-tri:4) rewrites every linear layer of the blocks on the model's token geometry,
    and the rewritten artifact trains."""
    _, report, shape = _export(name, tmp_path, "lp-tri:4")
    geometry = {}
    for row in report.layers:
        if row["status"] == "rewritten":
            key = (tuple(row["grid"]), row["extra_tokens"])
            geometry[key] = geometry.get(key, 0) + 1
    assert geometry == MODELS[name][2]
    session = edge_lbp.load(tmp_path / "art", "numba")
    x, y = _batch(shape, seed=1)
    losses = [session.train_step(x, y) for _ in range(STEPS)]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("lbp", ["none", "lp-tri:4"])
def test_own_siglip_graph_trains_on_ort_as_on_numba(tmp_path, lbp, export_extra):
    """Our SigLIP training graph holds only ops ONNX Runtime runs (DINOv2's ResizeGrad is ours): both engines
    train it alike, as the engine checks of ORT's graphs measure them."""
    _, _, shape = _export("siglip", tmp_path, lbp)
    measured = compare_engines(tmp_path / "art", shape, CLASSES)
    assert not exceeded(measured), measured


@pytest.mark.parametrize("name, final_norm", [("dinov2", "dinov2.layernorm."),
                                              ("siglip", "vision_model.post_layernorm.")])
def test_last_block_of_hf_vision_model_includes_its_final_norm(name, final_norm):
    from edge_lbp.methods.partial import last_blocks

    torch.manual_seed(0)
    names = [n for n, _ in MODELS[name][0]().named_parameters()]
    chosen = last_blocks(names, 1)
    assert {n for n in names if n.startswith(final_norm)} <= chosen
    assert any(".1." in n for n in chosen) and not any(".0." in n for n in chosen)
