"""Using the adapted model: ``edge-lbp predict`` / ``Predictor`` on the device, class names carried from the data
through checkpoints into every inference model, and those models in ONNX Runtime fed from their metadata alone.

On the committed tiny artifact (no torch); ONNX Runtime's ``InferenceSession`` is the reference for the exported
models (the training wheel provides it here; the tests that need it skip, naming it, where it is not installed).
"""
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edge_lbp.cli import main
from edge_lbp.core.inference_metadata import KEYS
from edge_lbp.data import open_dataset
from edge_lbp.predict import Predictor
from edge_lbp.trainer import Trainer

ARTIFACT = Path(__file__).resolve().parent / "fixtures" / "tiny_vit"  # 16x16 RGB input, 4 outputs
DOCS = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
THREADS = 1
PALETTE = {"ant": (200, 40, 40), "bee": (40, 200, 40), "cat": (40, 40, 200), "dog": (210, 210, 40)}


def write_colours(root, per_class, seed, size=(20, 24)):
    """Class-coloured noisy RGB PNGs (``root/<class>/<i>.png``, another size than the model's): learnable in a few
    epochs, so a preprocessing mistake changes predictions rather than hiding in chance."""
    rng = np.random.default_rng(seed)
    for name, colour in PALETTE.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 60, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trainer fitted (2 epochs) on a class-coloured folder with a checkpoint; its val folder apart."""
    root = tmp_path_factory.mktemp("predict")
    write_colours(root / "data" / "train", per_class=8, seed=0)
    write_colours(root / "data" / "val", per_class=5, seed=1)
    trainer = Trainer(ARTIFACT, threads=THREADS, lr=1e-2)
    train = open_dataset(root / "data", trainer.manifest, split="train")
    trainer.fit(train, epochs=2, batch_size=8, checkpoint=root / "ckpt", progress=False)
    return trainer, root


def _ort():
    return pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra's reference) is not installed")


def _from_metadata(path, images):
    """ONNX Runtime's softmax probabilities and class names for uint8 NHWC ``images`` at the model's input size,
    fed as the model's own metadata says (independently of edge_lbp's data code)."""
    ort = _ort()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert set(meta) == set(KEYS)
    if meta["edge_lbp.preprocessing"] == "in-graph":
        assert (meta["edge_lbp.input_dtype"], meta["edge_lbp.input_layout"]) == ("uint8", "NHWC")
        x = images
    else:
        assert (meta["edge_lbp.input_dtype"], meta["edge_lbp.input_layout"]) == ("float32", "NCHW")
        low, high = json.loads(meta["edge_lbp.input_range"])
        mean, std = (np.array(json.loads(meta[f"edge_lbp.{k}"])) for k in ("mean", "std"))
        x = ((images / 255.0 * (high - low) + low - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True), json.loads(meta["edge_lbp.classes"])


@pytest.mark.parametrize("preprocess", [False, True], ids=["outside", "in-graph"])
def test_onnx_runtime_gives_the_devices_predictions(trained, tmp_path, preprocess):
    trainer, root = trained
    val = open_dataset(root / "data", trainer.manifest, split="val", classes=trainer.classes)
    path = trainer.export_inference(tmp_path / "adapted.onnx", preprocess=preprocess)
    probabilities, names = _from_metadata(path, val.images)
    assert names == ["ant", "bee", "cat", "dog"] == trainer.classes

    device = trainer.predict(root / "data" / "val", top_k=4)
    assert [p.image for p in device] == sorted(str(f) for f in (root / "data" / "val").rglob("*.png"))
    for prediction, row in zip(device, probabilities):
        by_name = dict(prediction.top)
        np.testing.assert_allclose([by_name[n] for n in names], row, rtol=1e-4, atol=1e-6)
    assert [p.label for p in device] == [names[i] for i in probabilities.argmax(axis=1)]
    accuracy = np.mean([p.label == Path(p.image).parent.name for p in device])
    assert accuracy >= 0.75  # learned: a preprocessing mistake would not hide in chance (0.25)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image" if preprocess else "input"]


def test_in_graph_preprocessing_is_the_devices_normalisation(trained, tmp_path):
    """Both exports on the same pixels: the same logits up to float rounding (the in-graph ops are the device's)."""
    trainer, root = trained
    pixels = np.random.default_rng(3).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    outside, _ = _from_metadata(trainer.export_inference(tmp_path / "a.onnx"), pixels)
    inside, _ = _from_metadata(trainer.export_inference(tmp_path / "b.onnx", preprocess=True), pixels)
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Predictor(trainer.session).probabilities(pixels), outside, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("source", ["folder", "npz"])
def test_class_names_survive_train_checkpoint_resume_export(tmp_path, source):
    names = ["zebra", "yak", "ant", "moth"]  # not sorted: an .npz names its labels in its own order
    if source == "folder":
        data = write_colours(tmp_path / "data", per_class=2, seed=0)
        names = sorted(PALETTE)
    else:
        rng = np.random.default_rng(0)
        data = tmp_path / "data.npz"
        np.savez(data, x_train=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y_train=np.arange(8) % 4,
                 label_names=np.array(names))
    ckpt, onnx_path = tmp_path / "ckpt", tmp_path / "adapted.onnx"
    train = ["train", str(ARTIFACT), "--data", str(data), "--batch-size", "4", "--threads", "1",
             "--checkpoint", str(ckpt)]
    assert main(train + ["--epochs", "1"]) == 0
    assert Trainer.resume(ckpt, threads=THREADS).classes == names
    assert main(train + ["--epochs", "2", "--resume", "--export-onnx", str(onnx_path)]) == 0
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["edge_lbp.classes"]) == names
    assert Predictor.open(ckpt, threads=THREADS).classes == names
    # and through the API's export, straight from a resumed trainer
    resumed = Trainer.resume(ckpt, threads=THREADS)
    props = {p.key: p.value for p in onnx.load(str(resumed.export_inference(tmp_path / "b.onnx"))).metadata_props}
    assert json.loads(props["edge_lbp.classes"]) == names


def test_predict_on_a_folder_matches_evals_accuracy(trained, capsys):
    trainer, root = trained
    ckpt, val = root / "ckpt", root / "data" / "val"
    assert main(["eval", str(ARTIFACT), "--data", str(root / "data"), "--checkpoint", str(ckpt), "--threads", "1"]) == 0
    evaluated = float(re.search(r"accuracy (\S+)", capsys.readouterr().out).group(1))
    assert main(["predict", str(ckpt), str(val), "--json", "--top", "2", "--threads", "1"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 20 and all(len(r["top"]) == 2 for r in records)
    correct = [r["top"][0]["class"] == Path(r["image"]).parent.name for r in records]
    assert f"{np.mean(correct):.4f}" == f"{evaluated:.4f}"
    assert evaluated >= 0.75
    # the table: a header, then one line per image naming its classes
    assert main(["predict", str(ckpt), str(val / "cat" / "0.png"), str(val / "dog"), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2", "top-3"] and len(lines) == 1 + 1 + 5
    assert lines[1].startswith(str(val / "cat" / "0.png")) and re.search(r"\b(ant|bee|cat|dog) 0\.\d{3}", lines[1])


def test_arrays_are_classified_as_their_files_are(trained, tmp_path):
    trainer, root = trained
    files = sorted((root / "data" / "val" / "bee").glob("*.png"))
    predictor = Predictor(trainer.session, trainer.classes)
    from_files = predictor.predict(files, top_k=4)
    from_arrays = predictor.predict([np.asarray(Image.open(f)) for f in files], top_k=4, batch_size=2)
    assert [p.image for p in from_arrays] == [f"#{i}" for i in range(len(files))]
    from_batch = predictor.predict(np.stack([np.asarray(Image.open(f)) for f in files]), top_k=4)  # (N, H, W, C)
    one = predictor.predict(Image.open(files[0]), top_k=4)  # a Pillow image on its own
    assert len(from_batch) == len(files) and len(one) == 1
    for mine, theirs in zip([*from_arrays, *from_batch, *one], [*from_files, *from_files, from_files[0]]):
        assert [name for name, _ in mine.top] == [name for name, _ in theirs.top]
        # another batch size: BLAS may sum in another order
        np.testing.assert_allclose([p for _, p in mine.top], [p for _, p in theirs.top], rtol=1e-5)


def test_predict_bad_input_is_one_line(trained, tmp_path, capsys):
    trainer, root = trained
    ckpt = str(root / "ckpt")
    broken = tmp_path / "photos" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    Image.new("RGB", (30, 30), (200, 40, 40)).save(tmp_path / "photos" / "red.png")
    assert main(["predict", ckpt, str(broken), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-lbp: error: ") and err.count("\n") == 1 and "broken.png: not a readable image" in err
    # in a folder it is skipped, named in one warning line; the others are classified
    assert main(["predict", ckpt, str(tmp_path / "photos"), "--json", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == [str(tmp_path / "photos" / "red.png")]
    assert captured.err.count("\n") == 1 and "warning: skipped 1 unreadable image(s)" in captured.err
    for argv, cause in [([ckpt, str(tmp_path / "missing.jpg")], "no such image file or folder"),
                        ([str(tmp_path), str(broken)], "neither a checkpoint folder nor an artifact folder"),
                        ([str(ARTIFACT), str(broken), "--artifact", str(ARTIFACT)], "--artifact goes with a checkpoint")]:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and cause in err, err


def test_an_artifact_alone_names_its_outputs_by_index(capsys):
    assert Predictor.open(ARTIFACT, threads=THREADS).classes == ["0", "1", "2", "3"]


def test_the_fleets_round_model_names_its_classes(trained, tmp_path):
    pytest.importorskip("flwr", reason="the fleet extra is not installed")
    from edge_lbp.fleet.server import save_round

    trainer, root = trained
    folder = save_round(trainer, tmp_path / "round-1", preprocess=True)
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(props["edge_lbp.classes"]) == trainer.classes
    assert props["edge_lbp.preprocessing"] == "in-graph"
    assert Predictor.open(folder, threads=THREADS).classes == trainer.classes  # a round folder is a checkpoint


@pytest.mark.skipif(not DOCS.parent.joinpath("..", "mkdocs.yml").is_file(),
                    reason="the docs are not in this copy of the suite (.ci/arm64 copies tests/ alone)")
def test_every_metadata_key_is_documented():
    """docs/deploy.md's table of keys is KEYS, key for key (the page cannot fall behind the code)."""
    documented = re.findall(r"^\| `(edge_lbp\.[a-z_]+)` \|", DOCS.read_text(), re.M)
    assert documented == list(KEYS)


@pytest.mark.slow
def test_the_issues_scenario_on_real_images(tmp_path, export_extra, capsys):
    """Issue 26 as a user met it: the bundled backbone exported for CIFAR-100's first 10 classes, trained on their
    image folder, then the exported model in ONNX Runtime fed from its metadata alone (ImageOps.fit, uint8 pixels)
    against `edge-lbp eval` and `edge-lbp predict` on the 308 validation images."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100_10cls"
    if not folder.is_dir():
        pytest.skip(f"the shared data folder {folder} is not on this machine")
    from edge_lbp.export.models import load_pretrained
    from edge_lbp.methods import export_model

    artifact, ckpt, adapted = tmp_path / "artifact", tmp_path / "ckpt", tmp_path / "adapted.onnx"
    export_model(load_pretrained("vit-c10", num_classes=10), artifact, lr=1e-3)
    assert main(["train", str(artifact), "--data", str(folder), "--epochs", "2", "--checkpoint", str(ckpt),
                 "--export-onnx", str(adapted), "--onnx-preprocessing"]) == 0
    assert main(["eval", str(artifact), "--data", str(folder), "--checkpoint", str(ckpt)]) == 0
    evaluated = float(re.search(r"accuracy (\S+)", capsys.readouterr().out).group(1))
    assert main(["predict", str(ckpt), str(folder / "val"), "--json", "--top", "1"]) == 0
    device = {r["image"]: r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)}

    ort = _ort()
    from PIL import ImageOps

    session = ort.InferenceSession(str(adapted), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    height, width = json.loads(meta["edge_lbp.input_size"])
    names = json.loads(meta["edge_lbp.classes"])
    files = sorted(str(f) for f in (folder / "val").rglob("*.png"))
    pixels = np.stack([np.asarray(ImageOps.fit(Image.open(f).convert(meta["edge_lbp.color"]), (width, height),
                                               Image.Resampling.BILINEAR)) for f in files])
    (logits,) = session.run(None, {session.get_inputs()[0].name: pixels})
    elsewhere = {f: names[i] for f, i in zip(files, logits.argmax(axis=1))}
    accuracy = {k: np.mean([labels[f] == Path(f).parent.name for f in files])
                for k, labels in (("device", device), ("elsewhere", elsewhere))}
    print(f"eval {evaluated:.4f}, predict {accuracy['device']:.4f}, ONNX Runtime {accuracy['elsewhere']:.4f}")
    assert sorted(device) == files and f"{accuracy['device']:.4f}" == f"{evaluated:.4f}"
    assert sum(device[f] != elsewhere[f] for f in files) <= 1  # a near-tie may round either way
    assert evaluated > 0.2  # adapted (10 classes: chance is 0.1)
