"""edge_lbp: fine-tune vision transformers on the device with low-rank (Walsh-Hadamard) backpropagation.

The device path imports numpy, numba, onnx and psutil only; the workstation side (``edge_lbp.export``)
additionally needs torch and onnxruntime-training, imported lazily where they are used.

``edge_lbp.export_model(model, out_dir, ...)`` (workstation) writes an artifact folder;
``edge_lbp.load(artifact_dir)`` (device) opens it for training; ``edge_lbp.Trainer(artifact_dir)``
(device) trains it on data with schedules, accumulation, clipping and checkpoints; ``edge_lbp.Predictor.open(path)`` (device) classifies images with a checkpoint or an artifact.
"""
from edge_lbp._version import __version__
from edge_lbp.core import config

config.apply_process_settings()

__all__ = ["__version__", "export_model", "load", "Trainer", "Predictor"]


def __getattr__(name):
    # The exporter pulls in torch and the engines numba: import them only when asked for.
    if name in ("export_model", "load"):
        from edge_lbp import methods

        return getattr(methods, name)
    if name == "Trainer":  # lazily too, so that `import edge_lbp` stays light
        from edge_lbp.trainer import Trainer

        return Trainer
    if name == "Predictor":
        from edge_lbp.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'edge_lbp' has no attribute {name!r}")
