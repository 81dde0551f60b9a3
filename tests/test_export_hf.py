"""Hugging Face image classifiers (tiny random configurations) as users bring them: the model object, a
``save_pretrained`` folder as ``hf:PATH``; the numba engine against ONNX Runtime on the exported artifacts."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (a test dependency) is not installed")
import torch  # noqa: E402
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from engine_check import (assert_side_gradients_match, compare_engines, compare_random_training,  # noqa: E402
                          exceeded, rel as _rel)

SIDE, CLASSES = 32, 5
# No dropout and no drop-path: the engines draw different random streams, so they are compared where nothing
# is random (the randomness itself is tested in test_kernels_random.py and below).
VIT = dict(image_size=SIDE, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64, num_labels=CLASSES)
SWIN = dict(image_size=SIDE, patch_size=2, embed_dim=16, depths=[2, 1], num_heads=[1, 2], window_size=4,
            num_labels=CLASSES, drop_path_rate=0.0)
SIGLIP = dict(image_size=SIDE, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, num_labels=CLASSES)


def _siglip_config(num_labels, attn_implementation, **vision):
    """SigLIP's classifier keeps the vision tower's settings in its ``vision_config``."""
    return transformers.SiglipConfig(vision_config=vision, num_labels=num_labels,
                                     attn_implementation=attn_implementation)


MODELS = {
    "vit": (transformers.ViTConfig, transformers.ViTForImageClassification, VIT),
    "deit-distilled": (transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher, VIT),
    "swin": (transformers.SwinConfig, transformers.SwinForImageClassification, SWIN),
    # The tanh-form GELU (Tanh, TanhGrad), mean pooling over the patch tokens (DINOv2: test_export_hf_vision.py)
    "siglip": (_siglip_config, transformers.SiglipForImageClassification, SIGLIP),
}
# The token geometry each model's rewritten layers must get: (grid, extra tokens) -> layer count.
GEOMETRY = {
    "vit": {((8, 8), 1): 12},  # CLS + 8x8 patches; 2 layers x (q, k, v, o, fc1, fc2)
    "deit-distilled": {((8, 8), 2): 12},  # CLS + distillation token
    # q, k, v, o of the 3 blocks on 4x4 attention windows; the MLPs on their stage's grid (2 blocks on 16x16,
    # 1 on 8x8); the patch merging's reduction on the merged 8x8 grid.
    "swin": {((4, 4), 0): 12, ((16, 16), 0): 4, ((8, 8), 0): 3},
    "siglip": {((8, 8), 0): 12},  # no CLS token
}


def build(name, attn="sdpa", **changes):
    config_class, model_class, options = MODELS[name]
    torch.manual_seed(0)
    return model_class(config_class(**{**options, **changes}, attn_implementation=attn))


def _engines_agree(folder):
    measured = compare_engines(folder, (3, SIDE, SIDE), CLASSES)
    assert not exceeded(measured), measured


@pytest.mark.parametrize("lbp", ["lp-tri:4", "none"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hf_classifier_trains_on_numba_as_on_ort(tmp_path, name, lbp):
    report = export_model(build(name), tmp_path / "art", lbp=lbp, lr=0.01)
    assert report.manifest["model"]["num_classes"] == CLASSES
    assert report.manifest["model"]["family"] == name.split("-")[0]
    rewritten = [r for r in report.layers if r["status"] == "rewritten"]
    if lbp == "none":
        assert not rewritten
    else:
        geometry = {}
        for r in rewritten:
            key = (tuple(r["grid"]), r["extra_tokens"])
            geometry[key] = geometry.get(key, 0) + 1
        assert geometry == GEOMETRY[name]
    _engines_agree(tmp_path / "art")


def test_eager_attention_exports_the_same_function(tmp_path):
    """attn_implementation="eager" and the default (sdpa) export graphs with the same logits and training."""
    sdpa = export_model(build("vit"), tmp_path / "sdpa", lbp="lp-tri:4")
    eager = export_model(build("vit", attn="eager"), tmp_path / "eager", lbp="lp-tri:4")
    assert [r["grid"] for r in sdpa.layers] == [r["grid"] for r in eager.layers]
    x = np.random.default_rng(1).standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    a, b = edge_lbp.load(tmp_path / "sdpa", "numba"), edge_lbp.load(tmp_path / "eager", "numba")
    assert _rel(a.eval_step(x), b.eval_step(x)) < 1e-5
    _engines_agree(tmp_path / "eager")


def test_distilled_deit_logits_are_the_mean_of_its_heads(tmp_path):
    model = build("deit-distilled").eval()
    export_model(model, tmp_path / "art", lbp="none")
    x = np.random.default_rng(2).standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    np.testing.assert_allclose(out.logits.numpy(), (out.cls_logits + out.distillation_logits).numpy() / 2, rtol=1e-6)
    np.testing.assert_allclose(edge_lbp.load(tmp_path / "art", "numba").eval_step(x), out.logits.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_checkpoint_folder_exports_offline(tmp_path):
    """``hf:PATH`` loads config.json + model.safetensors; --num-classes puts a new head on the same backbone."""
    model = build("vit").eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    report = export_model(f"hf:{tmp_path / 'ckpt'}", tmp_path / "art", lbp="lp-tri:4")
    assert report.manifest["model"]["kind"] == "hf" and report.manifest["model"]["num_classes"] == CLASSES
    x = np.random.default_rng(3).standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(edge_lbp.load(tmp_path / "art", "numba").eval_step(x), want, rtol=1e-4, atol=1e-5)
    relabelled = export_model(f"hf:{tmp_path / 'ckpt'}", tmp_path / "art7", lbp="none", num_classes=7)
    assert relabelled.manifest["model"]["num_classes"] == 7
    params = edge_lbp.load(tmp_path / "art7", "numba").state.parameters()
    np.testing.assert_array_equal(params["vit.embeddings.cls_token"], model.vit.embeddings.cls_token.detach().numpy())
    assert params["classifier.weight"].shape == (7, VIT["hidden_size"])


# Swin with drop-path and dropout; ViT with dropout on its attention probabilities only, which torch exports from
# scaled_dot_product_attention as a Dropout without training_mode (the identity) until the exporter sets it.
RANDOM = {"swin-drop-path": ("swin", dict(drop_path_rate=0.5, hidden_dropout_prob=0.2)),
          "vit-attention-dropout": ("vit", dict(attention_probs_dropout_prob=0.3))}


@pytest.mark.parametrize("case", list(RANDOM))
def test_dropout_trains_from_the_session_seed_and_evaluates_without_it(tmp_path, case):
    """The numba engine repeats a run from its seed, another seed differs (so the model drops something);
    evaluation draws nothing and equals torch in eval mode."""
    name, changes = RANDOM[case]
    model = build(name, **changes)
    export_model(model, tmp_path / "art", lbp="lp-tri:4")
    probe = np.random.default_rng(4).standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(probe)).logits.numpy()
    measured = compare_random_training(tmp_path / "art", probe, want, CLASSES)
    assert measured["eval_numba"] < 1e-4 and measured["eval_ort"] < 1e-4, measured
    assert measured["repeats"] and measured["seed_matters"], measured


@pytest.mark.parametrize("name, last, head", [
    ("vit", {"vit.layers.1.", "vit.layernorm."}, ["classifier.weight", "classifier.bias"]),
    ("deit-distilled", {"deit.layers.1.", "deit.layernorm."},
     ["cls_classifier.weight", "cls_classifier.bias", "distillation_classifier.weight", "distillation_classifier.bias"]),
    # Swin: the last stage's one block; the stages' patch merging (layers.<s>.downsample) is no block
    ("swin", {"swin.encoder.layers.1.blocks.0.", "swin.layernorm."}, ["classifier.weight", "classifier.bias"]),
])
def test_last_blocks_and_head_know_hugging_face_names(name, last, head):
    from edge_lbp.methods.partial import HEAD_PREFIXES, last_blocks

    names = [n for n, _ in build(name).named_parameters()]
    assert [n for n in names if n.startswith(HEAD_PREFIXES)] == head
    chosen = last_blocks(names, 1)
    assert chosen == {n for n in names if n.startswith((*last, *head))} and len(chosen) > len(head) + 2


def test_hf_model_trains_its_last_block_on_numba_as_on_ort(tmp_path):
    report = export_model(build("vit"), tmp_path / "art", method="last:1", lr=0.01)
    trainable = report.manifest["trainable"]
    assert trainable and all(n.startswith(("vit.layers.1.", "vit.layernorm.", "classifier.")) for n in trainable)
    assert "vit.layers.1.mlp.fc1.weight" in trainable and "vit.layers.0.mlp.fc1.weight" not in trainable
    _engines_agree(tmp_path / "art")


@pytest.mark.parametrize("name, depth", [("vit", 2), ("swin", 3)])
def test_hf_model_side_tunes_its_blocks_without_backbone_backprop(tmp_path, name, depth):
    """Side-tuning taps every block of a Hugging Face model (Swin: the blocks of every stage, not the stages); the
    export checks that no backward node reads the backbone, and the side network's gradients equal ORT's."""
    report = export_model(build(name), tmp_path / "side", method="side", optimizer="sgd", lbp="none")
    manifest = report.manifest
    assert manifest["method"] == {"name": "side", "taps": list(range(depth))}
    assert manifest["trainable"] and all(n.startswith("side.") for n in manifest["trainable"])
    assert all(n.startswith("backbone.") for n in manifest["frozen"])
    assert not any(n.startswith("backbone.classifier.") for n in manifest["frozen"])  # the unread head dropped out
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 3, SIDE, SIDE)).astype(np.float32), rng.integers(0, CLASSES, 3)
    assert_side_gradients_match(tmp_path / "side", x, y)


def test_hf_model_trains_lora_adapters_on_numba_as_on_ort(tmp_path):
    """lora:R adapts Hugging Face's q/k/v/o projections and MLP layers; only they and the classifier train."""
    report = export_model(build("vit"), tmp_path / "lora", method="lora:2", lbp="none", lr=0.01)
    trainable = report.manifest["trainable"]
    adapted = {n.rsplit(".", 2)[-2] for n in trainable if n.endswith((".lora_a", ".lora_b"))}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}
    assert [n for n in trainable if not n.endswith((".lora_a", ".lora_b"))] == ["classifier.weight", "classifier.bias"]
    _engines_agree(tmp_path / "lora")
    # The inference model folds the adapters into their weights and gives the adapted logits.
    from edge_lbp.methods import export_inference
    import onnxruntime

    session, rng = edge_lbp.load(tmp_path / "lora", "numba"), np.random.default_rng(3)
    for _ in range(3):
        session.train_step(rng.standard_normal((2, 3, SIDE, SIDE)).astype(np.float32), rng.integers(0, CLASSES, 2))
    path = export_inference(session, tmp_path / "adapted.onnx")
    import onnx

    assert not [t.name for t in onnx.load(str(path)).graph.initializer if "lora" in t.name]
    x = rng.standard_normal((4, 3, SIDE, SIDE)).astype(np.float32)
    folded = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(folded, session.eval_step(x), rtol=0, atol=1e-5)
