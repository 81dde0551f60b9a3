"""Checkpoints: atomic, checked on loading, and a resumed run equals the uninterrupted one bit for bit."""
import os
import signal

import numpy as np
import pytest

# edge_lbp before torch: edge_lbp makes OpenMP threads wait passively, which must precede torch's OpenMP start.
import edge_lbp.trainer as trainer_module
from edge_lbp.checkpoint import METADATA, CheckpointError, load_checkpoint, save_checkpoint
from edge_lbp.cli import main
from edge_lbp.data import open_dataset
from edge_lbp.trainer import Trainer

pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")

from edge_lbp.methods import export_model  # noqa: E402
from test_data import write_folder  # noqa: E402

THREADS = 1  # see test_trainer.py: steady step times on a shared 2-core machine


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "vit-tiny"
    export_model("vit-tiny", folder, lr=1e-3)
    return folder


def _batches(count, seed=0, n=4):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)) for _ in range(count)]


def _same_parameters(a, b):
    pa, pb = a.session.state.parameters(), b.session.state.parameters()
    return pa.keys() == pb.keys() and all(np.array_equal(pa[n], pb[n]) for n in pa)


def test_save_and_load_roundtrip_replaces_the_tensor_file(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"a": np.arange(3, dtype=np.float32)}, {"step": 1})
    tensors, meta = load_checkpoint(folder)
    assert meta == {"step": 1} and np.array_equal(tensors["a"], [0, 1, 2])
    save_checkpoint(folder, {"a": np.ones(2, np.float32)}, {"step": 2})
    tensors, meta = load_checkpoint(folder)
    assert meta == {"step": 2} and tensors["a"].tolist() == [1, 1]
    assert sorted(p.name for p in folder.iterdir() if p.name not in (METADATA, ".lock"))[0].startswith("tensors-")
    assert len([p for p in folder.iterdir() if p.name != ".lock"]) == 2  # older tensor files and temporaries: gone


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / METADATA).write_text((f / METADATA).read_text()[:40]), "damaged, not valid JSON"),
    (lambda f: next(f.glob("tensors-*")).write_bytes(b"\0" * 10), "checksum mismatch"),
    (lambda f: next(f.glob("tensors-*")).unlink(), "missing"),
    (lambda f: (f / METADATA).unlink(), "no checkpoint here"),
])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage, message):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"a": np.zeros(4, np.float32)}, {})
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_cli_reports_a_damaged_checkpoint_in_one_line(artifact, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    Trainer(artifact, threads=THREADS).save(folder)
    tensor_file = next(folder.glob("tensors-*"))
    tensor_file.write_bytes(tensor_file.read_bytes()[:-100])  # a partial copy
    data = write_folder(tmp_path / "data", per_class=1)
    assert main(["eval", str(artifact), "--threads", "1", "--data", str(data), "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-lbp: error: ") and "checksum mismatch" in err and err.count("\n") == 1


@pytest.mark.parametrize("config, k", [
    ({"schedule": "cosine", "warmup_steps": 2, "total_steps": 8, "clip_norm": 0.5}, 3),
    ({"accumulate": 2, "lr": 3e-3}, 4),
])
def test_resume_continues_bit_for_bit(artifact, tmp_path, config, k):
    data = _batches(8)
    straight = Trainer(artifact, threads=THREADS, **config)
    straight_losses = [straight.step(x, y) for x, y in data]
    first = Trainer(artifact, threads=THREADS, **config)
    losses = [first.step(x, y) for x, y in data[:k]]
    first.save(tmp_path / "ckpt")
    resumed = Trainer.resume(tmp_path / "ckpt", threads=THREADS)
    assert resumed is not first and resumed.updates == first.updates and resumed.lr == first.lr
    losses += [resumed.step(x, y) for x, y in data[k:]]
    assert np.array_equal(losses, straight_losses)
    assert _same_parameters(resumed, straight)
    assert resumed.session.state.step == straight.session.state.step == straight.updates
    moments_a, moments_b = resumed.session.state.optimizer_state(), straight.session.state.optimizer_state()
    assert all(np.array_equal(moments_a["first_order_moments"][n], moments_b["first_order_moments"][n])
               for n in moments_b["first_order_moments"])


def test_save_refuses_a_half_accumulated_update(artifact, tmp_path):
    trainer = Trainer(artifact, threads=THREADS, accumulate=2)
    trainer.step(*_batches(1)[0])
    with pytest.raises(ValueError, match="1 micro-batch.*pending"):
        trainer.save(tmp_path / "ckpt")


def test_interrupted_fit_resumes_mid_epoch_with_the_same_data_order(artifact, tmp_path, monkeypatch):
    data_dir = write_folder(tmp_path / "data", per_class=5)  # 15 images: 4 batches of 4 per epoch
    config = {"lr": 2e-3, "schedule": "cosine", "warmup_steps": 1, "seed": 7, "clip_norm": 1.0}
    fit = {"epochs": 2, "batch_size": 4, "augment": True, "progress": False}
    straight = Trainer(artifact, threads=THREADS, **config)
    data = open_dataset(data_dir, straight.manifest)
    history = straight.fit(data, data, **fit)

    real_batches = trainer_module.batches

    def ctrl_c_in_second_epoch(*args, **kw):  # the user presses Ctrl-C while batch 2 of epoch 2 is prepared
        for index, batch in enumerate(real_batches(*args, **kw), start=kw.get("start", 0)):
            if kw.get("epoch") == 1 and index == 2:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(trainer_module, "batches", ctrl_c_in_second_epoch)
    # Whatever handler was there before fit (a background process inherits SIGINT ignored) must be put back.
    handler_before = signal.getsignal(signal.SIGINT)
    checkpoint = tmp_path / "ckpt"
    interrupted = Trainer(artifact, threads=THREADS, **config)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(data, data, checkpoint=checkpoint, **fit)
    assert signal.getsignal(signal.SIGINT) is handler_before  # fit put the handler back
    monkeypatch.undo()
    resumed = Trainer.resume(checkpoint, threads=THREADS)
    assert (resumed.epoch, resumed.batch, resumed.updates) == (1, 3, 7)  # stopped after the step on batch 2
    assert len(resumed.history) == 1
    resumed_history = resumed.fit(open_dataset(data_dir, resumed.manifest, classes=resumed.classes), data, **fit)
    assert _same_parameters(resumed, straight)
    without_time = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_history] == without_time
