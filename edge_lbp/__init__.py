"""edge_lbp: fine-tune vision transformers on the device with low-rank (Walsh-Hadamard) backpropagation.

The device path imports numpy, numba, onnx and psutil only; the workstation side (``edge_lbp.export``)
additionally needs torch and onnxruntime-training, imported lazily where they are used.

``edge_lbp.export_model(model, out_dir, ...)`` (workstation) writes an artifact folder;
``edge_lbp.load(artifact_dir)`` (device) opens it for training; ``edge_lbp.Trainer(artifact_dir)``
(device) trains it on data with schedules, accumulation, clipping and checkpoints.
"""
import os as _os

# The source tree keeps export/, runtime/ and devices/ beside this folder (the product's layout); an installed copy
# has them inside it. Run from a checkout, Python imports this folder ahead of any installed copy, so point the
# package's search path at the checkout's root too: edge_lbp.runtime then means <root>/runtime, as setup.cfg maps it.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "runtime")) and _os.path.isfile(
        _os.path.join(_root, "runtime", "__init__.py")):
    __path__.append(_root)

from edge_lbp._version import __version__  # noqa: E402
from edge_lbp.core import config  # noqa: E402

config.apply_process_settings()

__all__ = ["__version__", "export_model", "load", "Trainer"]


def __getattr__(name):
    # The exporter pulls in torch and the engines numba: import them only when asked for.
    if name in ("export_model", "load"):
        from edge_lbp import methods

        return getattr(methods, name)
    if name == "Trainer":  # lazily too, so that `import edge_lbp` stays light
        from edge_lbp.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'edge_lbp' has no attribute {name!r}")
