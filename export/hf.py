"""Hugging Face image classifiers: their input shape, and a local checkpoint folder (``hf:PATH``) as a model.

A model object needs nothing from here beyond ``input_shape``: its outputs (``ImageClassifierOutput``, DeiT's
distilled output) are reduced to the logits by ``onnx_export.first_output_only``. transformers is imported only
for ``hf:PATH``; it is never a device requirement.
"""
import json
from pathlib import Path

PREFIX = "hf:"
WEIGHTS = "model.safetensors"


def input_shape(config):
    """(C, H, W) from a model's ``config``: the presets' ``in_chans``/``img_size`` or Hugging Face's
    ``num_channels``/``image_size`` (an int or an (H, W) pair), its own or its ``vision_config``'s (SigLIP's
    classifier keeps them there); None when it has neither."""
    for source in (config, getattr(config, "vision_config", None)):
        for channels, size in (("in_chans", "img_size"), ("num_channels", "image_size")):
            if hasattr(source, channels) and hasattr(source, size):
                side = getattr(source, size)
                height, width = (side, side) if isinstance(side, int) else tuple(side)
                return int(getattr(source, channels)), int(height), int(width)
    return None


def load_checkpoint(path, num_classes=None):
    """The classifier saved in ``path`` by ``save_pretrained`` (``config.json`` + ``model.safetensors``), offline.

    The class is the first of the config's ``architectures`` (so a distilled DeiT keeps its two heads), else
    ``AutoModelForImageClassification``. With ``num_classes`` different from the checkpoint's, the head is new
    (transformers initialises it) and every other weight comes from the file. Pickled ``.bin`` checkpoints are
    never loaded.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{PREFIX}{path}: no config.json (a folder written by save_pretrained is expected)")
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{PREFIX}{path}: no {WEIGHTS} (pickled checkpoints are not loaded; "
                                "save with safe_serialization)")
    try:
        import transformers
    except ImportError:
        raise ValueError(f"{PREFIX}{path} needs transformers on the workstation (pip install transformers)") from None
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    cls = cls or transformers.AutoModelForImageClassification
    options = {} if num_classes is None else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{PREFIX}{path}: transformers cannot load it: {' '.join(str(exc).split())}") from None
