"""One home per training method, and the one vocabulary that names them (``--method`` on the command line,
``method=`` in :func:`export_model`)::

    all | last:K | bias | head     backprop through part of the model      (partial)
    lora:R                          LoRA adapters and the head              (lora)
    zo-hybrid:K                     SPSA for all but the last K blocks      (zo_hybrid)
    side                            a side network beside the backbone      (side)

``--lbp`` (:mod:`.lbp`) is the backward of whatever backprop the method does. Each method is a
:class:`~edge_lbp.methods.base.Method`; this module parses their spellings, reads them back from a manifest, and
offers the three calls that depend on the method: :func:`export_model` (workstation), :func:`load` and
:func:`export_inference` (device). The old spellings (``train=``/``--train``, ``method="backprop"``) still work for
this release, with a one-line notice.
"""
from __future__ import annotations

import warnings

from edge_lbp.core import defaults
from edge_lbp.methods.base import Method
from edge_lbp.methods.lora import Lora
from edge_lbp.methods.partial import Partial
from edge_lbp.methods.side import Side
from edge_lbp.methods.zo_hybrid import ZOHybrid

METHODS = (Partial, Lora, ZOHybrid, Side)
SYNTAX = " | ".join(m.SYNTAX for m in METHODS)
DEFAULT = "all"
_RECORDED = {m.name: m for m in METHODS if m.name != Method.name}  # methods with a manifest record of their own


def parse(text: str, *, taps=None) -> Method:
    """The method spelled ``text``; a one-line ValueError naming every spelling otherwise."""
    text = str(text).strip()
    method = next((m for m in (cls.parse(text) for cls in METHODS) if m is not None), None)
    if method is None:
        raise ValueError(f"unknown method {text!r}; choose {SYNTAX}")
    if taps is not None:
        if not isinstance(method, Side):
            raise ValueError("--taps applies to --method side")
        method.taps = taps
    return method


def resolve(method=None, *, train=None, taps=None) -> Method:
    """``parse`` with the old spellings, ``train=X`` (``--train X``) and ``method="backprop"``: one notice naming
    what was used, once the spelling is known to be good (a wrong one is only its error)."""
    old = []
    if method == "backprop":
        old.append("--method backprop is --method all")
        method = None
    if train not in (None, DEFAULT):
        if method not in (None, DEFAULT):
            raise ValueError(f"--method {method} chooses the trainable set itself; leave out --train (its deprecated "
                             "spelling)")
        old.append(f"--train {train} is --method {train}")
        method = train
    chosen = parse(method or DEFAULT, taps=taps)
    if old:
        warnings.warn(f"deprecated: {'; '.join(old)}", FutureWarning, stacklevel=3)
    return chosen


def of_manifest(manifest: dict) -> Method:
    """The method an artifact was exported with."""
    record = manifest.get("method")
    if record is not None:
        if record.get("name") not in _RECORDED:
            raise ValueError(f"the artifact's method {record.get('name')!r} is not one of "
                             f"{', '.join(_RECORDED)} (exported by a newer edge_lbp?)")
        return _RECORDED[record["name"]].from_record(record)
    return parse(manifest.get("trainable_set", DEFAULT))


def export_model(model, out_dir, *, method=None, train=None, taps=None, lbp=defaults.SELECTION, grid=None,
                 extra_tokens=None, block=defaults.EXPORT_BLOCK, **options):
    """Export ``model`` with ``method`` (a spelling of :data:`SYNTAX`, default ``all``) and the ``lbp`` backward;
    the other options are :func:`edge_lbp.export.exporter.export_artifact`'s. Returns its ``Report``."""
    from edge_lbp.export.exporter import export_artifact
    from edge_lbp.methods import lbp as lbp_option

    chosen = resolve(method, train=train, taps=taps)
    config = lbp_option.parse(lbp, grid=grid, extra_tokens=extra_tokens, block=block)
    return export_artifact(model, out_dir, method=chosen, lbp=config, **options)


def load(artifact_dir, engine: str = "auto", *, threads=None, verify: bool = True, seed: int = 0,
         method_options=None):
    """Open an artifact folder for training with the session its method needs (see ``edge_lbp.runtime``'s
    ``open_engine`` for ``engine``, ``threads`` and ``seed``); ``method_options``: the method's options on the
    device (a mapping; zo-hybrid's are ``edge_lbp.core.zo.ZOConfig``'s fields), the session's
    ``method_options`` then."""
    from edge_lbp.runtime import check_engine
    from edge_lbp.core.artifact import Artifact

    engine = check_engine(engine)
    artifact = Artifact.open(artifact_dir, verify=verify)
    return of_manifest(artifact.manifest).open_session(artifact, engine, seed=seed, threads=threads,
                                                       options=method_options)


def inference_model(session, *, classes=None, preprocess: bool = False):
    """The adapted model as a plain ONNX graph (``edge_lbp.runtime.inference``), folded as its method says, its
    outputs named ``classes`` in its metadata; ``preprocess``: it takes uint8 NHWC images and scales and
    normalises them itself."""
    from edge_lbp.runtime.inference import inference_model as plain

    return plain(session, fold=of_manifest(session.artifact.manifest).fold, classes=classes, preprocess=preprocess)


def export_inference(session, path, *, classes=None, preprocess: bool = False):
    """Write :func:`inference_model` to ``path`` atomically (``Trainer.export_inference`` passes the trainer's
    class names)."""
    from edge_lbp.runtime.inference import write_model

    return write_model(inference_model(session, classes=classes, preprocess=preprocess), path)
