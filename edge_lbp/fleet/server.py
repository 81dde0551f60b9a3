"""The ServerApp: Flower's FedAvg over the artifact's trainable parameters, the global model saved every round.

It starts from the artifact's ``params.safetensors``, runs ``num-server-rounds`` rounds (each: the boards train,
FedAvg weights their parameters by their number of training examples, the boards evaluate the new global model on
their own data), and after every round writes ``<out>/round-<r>/``: ``model.onnx`` (the inference graph) and a
Trainer checkpoint (``Trainer.resume`` continues training from it; ``edge-lbp eval --checkpoint`` evaluates it).
Both writes are atomic; ``checkpoint.json`` is written last, so a round folder with it is complete.

One line per round goes to stdout (``flwr run --stream`` and ``edge-lbp fleet local`` show it) and one JSON
record to ``<out>/rounds.jsonl``: the global validation accuracy (``val-data``), how many boards trained, their
mean train loss, local accuracy and step latency, and their energy where measured.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from edge_lbp.fleet.client import load_trainable, trainable_record

app = ServerApp()
# Summed over the boards rather than averaged: fleet totals (local accuracy is then correct / samples).
SUMMED_KEYS = ("energy_j", "energy_measured", "local_val_correct", "local_val_samples")


class FleetAvg(FedAvg):
    """Flower's FedAvg over the boards that answered within the round's time, when at least ``min_train_nodes``
    did (fewer: the global model stays as it was); it remembers what they replied, for the round line."""

    trained = 0
    train_metrics = None

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.trained = sum(not reply.has_error() for reply in replies)
        if self.trained < self.min_train_nodes:
            self.train_metrics = None
            return None, None
        arrays, self.train_metrics = super().aggregate_train(server_round, replies)
        return arrays, self.train_metrics


def aggregate_train_metrics(records, weight_key: str) -> MetricRecord:
    """FedAvg's weighted mean per metric, except the counts and energy in ``SUMMED_KEYS``: the fleet's totals."""
    total = sum(float(r["metrics"][weight_key]) for r in records)
    merged = MetricRecord()
    for record in records:
        metrics = record["metrics"]
        for key, value in metrics.items():
            if key == weight_key:
                continue
            share = value if key in SUMMED_KEYS else value * float(metrics[weight_key]) / total
            merged[key] = merged.get(key, 0.0) + share
    return merged


@app.main()
def main(grid: Grid, context: Context) -> None:
    from edge_lbp.data import open_dataset
    from edge_lbp.trainer import Trainer

    config = context.run_config
    if not config.get("artifact"):
        raise ValueError("the run config has no artifact: flwr run ... --run-config 'artifact=\"/path/to/artifact\"'")
    trainer = Trainer(str(config["artifact"]), threads=int(config["threads"]) or None)
    val = open_dataset(str(config["val-data"]), trainer.manifest, split="val") if config["val-data"] else None
    trainer.classes = list(val.classes) if val is not None else None  # saved, so evaluating a checkpoint agrees
    out, rounds = Path(str(config["out"])), int(config["num-server-rounds"])
    preprocess = bool(config["onnx-preprocessing"])  # model.onnx takes uint8 NHWC images
    out.mkdir(parents=True, exist_ok=True)
    nodes = int(config["min-nodes"])
    strategy = FleetAvg(fraction_evaluate=float(config["fraction-evaluate"]), min_train_nodes=nodes,
                        min_evaluate_nodes=min(nodes, 1) if float(config["fraction-evaluate"]) else 0,
                        min_available_nodes=nodes, train_metrics_aggr_fn=aggregate_train_metrics)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_trainable(trainer.session, arrays)
        record = {"round": server_round, "rounds": rounds}
        if val is not None:
            result = trainer.evaluate(val)
            record.update(val_accuracy=result["accuracy"], val_loss=result["loss"], val_samples=result["samples"])
        if server_round:
            saved = save_round(trainer, out / f"round-{server_round}", preprocess=preprocess)
            record.update(boards=strategy.trained, min_boards=nodes, saved=str(saved))
            record.update(dict(strategy.train_metrics or {}))
        print(round_line(record), flush=True)
        _append_line(out / "rounds.jsonl", json.dumps(record))
        return MetricRecord({k: v for k, v in record.items() if isinstance(v, (int, float))})

    train_config = ConfigRecord({"local-epochs": int(config["local-epochs"]), "batch-size": int(config["batch-size"]),
                                 "lr": float(config["lr"]), "seed": int(config["seed"])})
    strategy.start(grid=grid, initial_arrays=trainable_record(trainer.session), num_rounds=rounds,
                   timeout=float(config["round-timeout"]), train_config=train_config, evaluate_fn=evaluate)


def save_round(trainer, folder: Path, *, preprocess: bool = False) -> Path:
    """The global model of a round: ``model.onnx`` first (its outputs named as the validation data names its
    classes; ``preprocess``: in its graph), then the checkpoint, whose ``checkpoint.json`` is the commit point (a
    crash in between leaves no ``checkpoint.json``: the round folder does not count)."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer.export_inference(folder / "model.onnx", preprocess=preprocess)
    trainer.save(folder)
    return folder


def round_line(record: dict) -> str:
    """``round 2/5: global val accuracy 0.4123 (loss 1.62, 308 images); 3 boards: ...``."""
    head = f"round {record['round']}/{record['rounds']}: global val accuracy "
    head += (f"{record['val_accuracy']:.4f} (loss {record['val_loss']:.3f}, {record['val_samples']} images)"
             if "val_accuracy" in record else "not measured (no val-data)")
    if not record["round"]:
        return head + "; the initial model"
    boards = f"; {record['boards']} boards trained"
    if record["boards"] < record.get("min_boards", 0):
        boards += f", fewer than min-nodes {record['min_boards']}: the global model stays as it was"
    if "train_loss" in record:
        boards += f" (train loss {record['train_loss']:.3f}, step {record['step_ms']:.0f} ms"
        if record.get("local_val_samples"):
            boards += f", local val accuracy {record['local_val_correct'] / record['local_val_samples']:.4f}"
        measured = int(record.get("energy_measured", 0))
        boards += f", energy {record['energy_j']:.1f} J on {measured})" if measured else ", energy not measured)"
    return head + boards + f"; saved {record['saved']}"


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
