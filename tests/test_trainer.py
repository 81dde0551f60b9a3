"""Trainer: schedules, gradient accumulation, clipping, evaluation, fit history, and the train / eval commands."""
import importlib.util
import math

import numpy as np
import pytest

# edge_lbp before torch: edge_lbp makes OpenMP threads wait passively, which must precede torch's OpenMP start.
import edge_lbp

pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")

from edge_lbp.cli import main  # noqa: E402
from edge_lbp.data import batches, open_dataset  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.schedule import schedule_lr  # noqa: E402
from edge_lbp.trainer import Trainer  # noqa: E402
from test_data import write_folder  # noqa: E402


# One thread: on a 2-core machine shared with other jobs, a second Numba/BLAS thread waiting for a busy core
# makes steps up to 20x slower; the results do not depend on it.
THREADS = 1


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trainer") / "vit-tiny"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images") / "data", per_class=4)


def _batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def _grad_norm(grads):
    return math.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in grads.values()))


def test_schedules_closed_form():
    peak = 0.1
    assert [schedule_lr(u, peak=peak, warmup_steps=4) for u in range(6)] == \
        pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    cosine = [schedule_lr(u, peak=peak, schedule="cosine", warmup_steps=2, total_steps=10) for u in range(12)]
    expected = [0.05, 0.1] + [peak * (1 + math.cos(math.pi * (u - 2) / 8)) / 2 for u in range(2, 10)] + [0.0, 0.0]
    assert cosine == pytest.approx(expected)
    assert cosine[2] == pytest.approx(peak) and cosine[6] == pytest.approx(peak / 2)
    with pytest.raises(ValueError, match="total_steps"):
        schedule_lr(0, peak=peak, schedule="cosine")


def test_lr_follows_the_schedule_per_update(artifact):
    trainer = Trainer(artifact, threads=THREADS, lr=0.01, schedule="cosine", warmup_steps=1, total_steps=3,
                      accumulate=2)
    used = []
    for i in range(6):
        trainer.step(*_batch(i))
        used.append(trainer.session.optimizer.lr)
    assert trainer.updates == 3
    assert used[1::2] == pytest.approx([0.01, 0.01, 0.005])  # set at each update (every 2nd call)
    assert trainer.lr == 0.0


def test_accumulation_is_the_mean_of_micro_batch_gradients(artifact):
    trainer = Trainer(artifact, threads=THREADS, accumulate=2)
    session = edge_lbp.load(artifact, "numba", threads=THREADS)
    (x1, y1), (x2, y2) = _batch(1), _batch(2)
    losses = [trainer.step(x1, y1), trainer.step(x2, y2)]
    assert trainer.updates == 1
    manual = [session.forward_backward(x1, y1), session.forward_backward(x2, y2, accumulate=True)]
    for g in session.grads.values():
        g *= np.float32(0.5)
    session.optimizer.step()
    assert losses == manual
    mine, theirs = trainer.session.state.parameters(), session.state.parameters()
    assert all(np.array_equal(mine[n], theirs[n]) for n in theirs)
    # The first micro-batch alone gives a different update: the second one counted.
    single = edge_lbp.load(artifact, "numba", threads=THREADS)
    single.train_step(x1, y1)
    assert not np.array_equal(single.state.parameters()["head.weight"], mine["head.weight"])


def test_clipping_scales_the_gradient_to_the_norm(artifact):
    x, y = _batch(3)
    reference = edge_lbp.load(artifact, "numba", threads=THREADS)
    reference.forward_backward(x, y)
    raw = _grad_norm(reference.grads)
    clipped = Trainer(artifact, threads=THREADS, clip_norm=raw / 10)
    clipped.step(x, y)
    assert clipped.grad_norm == pytest.approx(raw, rel=1e-6)
    assert _grad_norm(clipped.session.grads) == pytest.approx(raw / 10, rel=1e-5)
    loose = Trainer(artifact, threads=THREADS, clip_norm=raw * 2)  # below the limit: untouched
    loose.step(x, y)
    assert all(np.array_equal(loose.session.grads[n], reference.grads[n]) for n in reference.grads)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime-training not installed")
def test_ort_engine_refuses_clipping_and_checkpoints(artifact, tmp_path):
    with pytest.raises(ValueError, match="clip_norm needs the numba engine"):
        Trainer(artifact, threads=THREADS, engine="ort", clip_norm=1.0)
    trainer = Trainer(artifact, threads=THREADS, engine="ort")
    trainer.step(*_batch(0))
    with pytest.raises(ValueError, match="checkpoints need the numba engine"):
        trainer.save(tmp_path / "ckpt")


def test_evaluate_is_cross_entropy_and_accuracy(artifact, images):
    trainer = edge_lbp.Trainer(artifact, threads=THREADS)
    data = open_dataset(images, trainer.manifest)
    metrics = trainer.evaluate(batches(data, 5, shuffle=False))
    logits = np.concatenate([trainer.session.eval_step(x) for x, _ in batches(data, 12, shuffle=False)])
    logits = logits.astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert metrics["samples"] == 12
    assert metrics["loss"] == pytest.approx(-log_probs[np.arange(12), data.labels].mean(), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == data.labels))
    hits = logits.argmax(axis=1) == data.labels
    assert metrics["per_class"] == pytest.approx([hits[data.labels == k].mean() for k in range(3)] + [None] * 7)
    again = trainer.evaluate(data, train_counts=[200, 50, 5])
    assert {k: again.pop(k) for k in ("per_class", "groups")} == {
        "per_class": metrics.pop("per_class"), "groups": {"many": hits[:4].mean(), "medium": hits[4:8].mean(),
                                                          "few": hits[8:].mean()}}
    assert again == pytest.approx(metrics)


def test_fit_history_and_callbacks(artifact, images):
    trainer = Trainer(artifact, threads=THREADS, lr=2e-3, schedule="cosine", warmup_steps=1, seed=5)
    data = open_dataset(images, trainer.manifest)
    seen = []
    history = trainer.fit(data, data, epochs=2, batch_size=5, callbacks=[lambda t, r: seen.append((t, r))],
                          progress=False)
    assert [r["epoch"] for r in history] == [1, 2] and trainer.epoch == 2 and trainer.updates == 6
    assert seen == [(trainer, history[0]), (trainer, history[1])]
    for record in history:
        assert set(record) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}
        assert 0 <= record["val_accuracy"] <= 1 and record["seconds"] > 0
    # lr: that of each epoch's last update (index 2, then 5) on a cosine over 6 updates, the first a warm-up
    assert history[0]["lr"] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 1 / 5)) / 2)
    assert history[1]["lr"] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 4 / 5)) / 2)
    assert history[1]["val_loss"] == pytest.approx(trainer.evaluate(data)["loss"])
    assert trainer.fit(data, epochs=2) == history  # already done: nothing more to train
    assert trainer.classes == ["ant", "bee", "cat"]


def test_fit_updates_with_the_last_incomplete_accumulation(artifact, images):
    trainer = Trainer(artifact, threads=THREADS, accumulate=2)
    data = open_dataset(images, trainer.manifest)
    trainer.fit(data, epochs=1, batch_size=4, progress=False)  # 3 batches: updates after the 2nd and the 3rd
    assert trainer.updates == 2 and trainer.session.state.step == 2


def test_cli_train_then_eval(artifact, images, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    args = ["train", str(artifact), "--threads", "1", "--data", str(images), "--val", str(images),
            "--epochs", "1", "--batch-size", "6", "--checkpoint", str(checkpoint), "--lr", "1e-3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train: 12 images, 3 classes" in out and "epoch 1/1  train_loss" in out and "val_accuracy" in out
    assert main(args) == 2  # the checkpoint would be overwritten
    assert "holds a checkpoint; pass --resume" in capsys.readouterr().err
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2" in out and "epoch 1/2" not in out
    assert main(["eval", str(artifact), "--threads", "1", "--data", str(images),
                 "--checkpoint", str(checkpoint)]) == 0
    line, per_class = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("loss ") and "accuracy " in line and line.endswith("samples 12")
    trainer = Trainer(artifact, threads=THREADS)
    trainer.load_parameters(checkpoint)
    expected = trainer.evaluate(open_dataset(images, trainer.manifest))
    assert line == f"loss {expected['loss']:.4f}  accuracy {expected['accuracy']:.4f}  samples 12"
    ant, bee, cat = expected["per_class"][:3]
    shown = [f"ant {ant:.4f}", f"bee {bee:.4f}", f"cat {cat:.4f}"] + [f"{k} -" for k in range(3, 10)]
    assert per_class == "per class: " + "  ".join(shown)  # the model has 10 outputs, the data 3 classes
    assert main(["eval", str(artifact), "--threads", "1", "--data", str(images), "--checkpoint", str(checkpoint),
                 "--train-data", str(images)]) == 0
    groups = capsys.readouterr().out.strip().splitlines()[-1]
    assert groups == f"by training images: many -  medium -  few {expected['accuracy']:.4f}"  # 4 images a class


def test_cli_train_exports_an_inference_model(artifact, images, tmp_path, capsys):
    if importlib.util.find_spec("edge_lbp.runtime.inference") is None:
        assert main(["train", str(artifact), "--data", str(images), "--export-onnx", str(tmp_path / "m.onnx")]) == 2
        assert "--export-onnx needs edge_lbp.runtime.inference" in capsys.readouterr().err
        return
    out = tmp_path / "model.onnx"
    assert main(["train", str(artifact), "--threads", "1", "--data", str(images), "--epochs", "1",
                 "--batch-size", "12", "--export-onnx", str(out)]) == 0
    assert out.is_file() and "inference model:" in capsys.readouterr().out


def test_cli_errors_are_one_line(artifact, tmp_path, capsys):
    assert main(["train", str(artifact), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-lbp: error: ") and "no such image folder" in err and err.count("\n") == 1
    assert main(["train", str(artifact), "--data", str(tmp_path), "--resume"]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err


def test_step_times_are_recorded_per_call(tmp_path_factory):
    from edge_lbp.methods import export_model
    from edge_lbp.trainer import Trainer

    folder = tmp_path_factory.mktemp("steptimes") / "artifact"
    export_model("vit-tiny", folder, lr=0.01)
    trainer = Trainer(folder, threads=1)
    x, y = np.zeros((2, 3, 32, 32), np.float32), np.array([0, 1])
    for _ in range(3):
        trainer.step(x, y)
    assert len(trainer.step_times) == 3 and all(t > 0 for t in trainer.step_times)
