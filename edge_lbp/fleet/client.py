"""The ClientApp: each board trains the global model on its own data with the Trainer and sends back parameters.

Flower's SuperNode on the board runs it. The board's settings come from the SuperNode's ``--node-config``:

- ``artifact`` (required): the artifact folder on the board (the same export the server starts from);
- ``data`` (required): an image folder or ``.npz`` (its ``train`` split is trained on);
- ``val``: local validation data (default: the ``val`` split of ``data`` when it has one, else none);
- ``partition-id`` / ``num-partitions`` / ``partition-by`` (``iid`` or ``class``): train on one part of ``data``
  when several SuperNodes share a dataset (the local run); default the whole of it;
- ``threads``: Numba + BLAS threads, fixed (0 or absent: up to all cores, tuned per step).

A train message carries the global trainable parameters (an ``ArrayRecord`` named by parameter, in the artifact's
order) and the round's settings; the reply carries the updated parameters and ``num-examples`` (FedAvg's weight),
``train_loss``, ``local_val_correct`` / ``local_val_samples`` (after training, on the board's validation data; 0
without), ``step_ms`` (median step latency), ``energy_j`` and ``energy_measured`` (0 when the board has no power
sensor or model). Each message builds a fresh
Trainer: AdamW moments start at zero every round, as the optimizer state is the board's, not the fleet's.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_lbp.data import Dataset, open_dataset
from edge_lbp.fleet import partition

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    trainer, data, val = _board(msg, context, seed=int(config["seed"]) + int(config["server-round"]) - 1,
                                lr=float(config["lr"]) or None)
    from edge_lbp.devices import PowerSampler

    with PowerSampler() as sampler:
        history = trainer.fit(data, val, epochs=int(config["local-epochs"]), batch_size=int(config["batch-size"]),
                              progress=False)
    energy = sampler.energy().joules
    metrics = MetricRecord({
        "num-examples": len(data),
        "train_loss": float(history[-1]["train_loss"]),
        "local_val_samples": 0 if val is None else len(val),
        "local_val_correct": 0 if val is None else round(history[-1]["val_accuracy"] * len(val)),
        "step_ms": 1e3 * statistics.median(trainer.step_times),
        "energy_j": 0.0 if energy is None else float(energy),
        "energy_measured": 0 if energy is None else 1,
    })
    content = RecordDict({"arrays": trainable_record(trainer.session), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    trainer, data, val = _board(msg, context, seed=0, lr=None)
    result = trainer.evaluate(val if val is not None else data)
    metrics = MetricRecord({"num-examples": result["samples"], "loss": result["loss"],
                            "accuracy": result["accuracy"]})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def trainable_record(session) -> ArrayRecord:
    """The parameters the session trains as an ``ArrayRecord``, by name, in the artifact's order (for zo-hybrid,
    the ZO parameters after the trainable ones: they move too)."""
    params = session.state.parameters()
    return ArrayRecord({name: Array(params[name]) for name in session.state.trained})


def load_trainable(session, record: ArrayRecord) -> None:
    """Set the session's trainable parameters from ``record`` (names and shapes checked by the session)."""
    names = list(session.state.trained)
    if list(record.keys()) != names:
        raise ValueError(f"the global model's parameters {list(record.keys())[:3]}... are not this artifact's "
                         f"trainable set {names[:3]}... (another export on the server?)")
    session.state.set_parameters({name: np.asarray(record[name].numpy(), np.float32) for name in names})


def _board(msg: Message, context: Context, *, seed: int, lr):
    from edge_lbp.trainer import Trainer

    node = context.node_config
    missing = [key for key in ("artifact", "data") if not node.get(key)]
    if missing:
        raise ValueError(f"this SuperNode's --node-config lacks {', '.join(missing)} (e.g. --node-config "
                         "'artifact=\"/path/to/artifact\" data=\"/path/to/images\"')")
    threads = int(node.get("threads", 0)) or None
    trainer = Trainer(str(node["artifact"]), threads=threads, lr=lr, seed=seed)
    load_trainable(trainer.session, msg.content["arrays"])
    data, val = board_data(trainer.manifest, node)
    return trainer, data, val


def board_data(manifest, node) -> tuple[Dataset, Dataset | None]:
    """The board's training part and its local validation data (or ``None``), from its node config."""
    count, index = int(node.get("num-partitions", 1)), int(node.get("partition-id", 0))
    by, seed = str(node.get("partition-by", "iid")), int(node.get("partition-seed", 0))
    data = partition(open_dataset(str(node["data"]), manifest, split="train"), index, count, by=by, seed=seed)
    source = node.get("val") or (node["data"] if has_val_split(node["data"]) else None)
    if source is None:
        return data, None
    val = open_dataset(str(source), manifest, split="val", classes=data.classes)
    return data, partition(val, index, count, by=by, seed=seed)


def has_val_split(path) -> bool:
    """Whether ``path`` has a validation split of its own (``val/`` folder; ``x_val`` or ``x_test`` arrays)."""
    path = Path(str(path))
    if path.is_dir():
        return (path / "val").is_dir()
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            return bool({"x_val", "x_test"} & set(arrays.files))
    return False
