"""``export_artifact``: a model -> an artifact folder (forward ONNX -> ORT artifacts -> LBP rewrite -> folder).

The model is a ``torch.nn.Module`` (its first output is the logits: a Hugging Face classifier is taken as it
is), a preset name of ``edge_lbp.export.models.PRESETS``, a ``.onnx`` file, ``"package.module:factory"`` (the
factory is called with ``num_classes=`` when one is given), or ``"hf:PATH"``, a Hugging Face checkpoint folder.
Every input error is a one-line ``ValueError`` (``GradientError`` when ONNX Runtime cannot differentiate a node) or
``FileNotFoundError``, so the CLI can print it as is.
"""

import contextlib
import dataclasses
import importlib
import inspect
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from edge_lbp.core.defaults import EXPORT_GRADIENTS
from edge_lbp.export import training, writer

# What the built-in presets expect (CIFAR-style); other models get the same unless the caller says otherwise.
DEFAULT_MEAN_STD = 0.5, 0.5
_FACTORY = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)")


@dataclasses.dataclass
class Report:
    """What ``export_model`` did; ``format()`` renders the short human report."""

    source: str
    out_dir: Path
    layers: list
    trainable: int  # parameter elements
    frozen: int
    size: int  # artifact bytes
    manifest: dict

    @property
    def total(self):
        return self.trainable + self.frozen

    def format(self):
        rewritten = [r for r in self.layers if r["status"] == "rewritten"]
        exact = [r for r in self.layers if r["status"] != "rewritten"]
        width = max((len(r["layer"]) for r in self.layers), default=0)
        lines = [f"exported {self.source} -> {self.out_dir}"]
        if not self.layers:
            lines.append("LBP: no linear layer has a trainable weight, nothing to rewrite")
        if rewritten:
            lines.append(f"LBP rewritten: {len(rewritten)} layer(s)")
            chosen = dict.fromkeys((tuple(r["grid"]), r["block"], r["block_reason"]) for r in rewritten
                                   if r.get("block_reason"))
            lines += [f"  block auto: k{k} on the {g[0]}x{g[1]} grid, {why}" for g, k, why in chosen]
            lines += [f"  {r['layer']:<{width}}  {_geometry(r)}  r={r['rank']:<3} {r['tokens']} -> {r['rows']} rows"
                      f"  {r['flop_ratio']:.2f}x backward FLOPs" for r in rewritten]
        if exact:
            lines.append(f"left exact: {len(exact)} layer(s)")
            lines += [f"  {r['layer']:<{width}}  {r['reason']}" for r in exact]
        lines.append(f"parameters: {self.trainable:,} trainable + {self.frozen:,} frozen = {self.total:,}")
        lines.append(f"artifact: {_human_bytes(self.size)} ({self.size:,} bytes)")
        return "\n".join(lines)


def _geometry(row):
    grid = "x".join(map(str, row["grid"]))
    extra = f"+{row['extra_tokens']}" if row["extra_tokens"] else ""
    return f"{row['kind']:<6} grid {grid}{extra:<3} k{row['block']:<2} {row['selection']:<8}"


def _human_bytes(size):
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def export_artifact(model, out_dir, *, method, lbp, optimizer="adamw", lr=1e-3, input_shape=None,
                    num_classes=None, normalization=None, progress=None, gradients=EXPORT_GRADIENTS):
    """Export ``model`` to the artifact folder ``out_dir`` and return a ``Report``.

    ``method``: an ``edge_lbp.methods`` method (how the model is adapted, what trains, what the manifest records);
    ``lbp``: the rewrite's ``LbpConfig``; ``input_shape``: ``(C, H, W)``; ``normalization``: ``(mean, std)`` per
    channel; ``progress``: called with one line per stage; ``gradients``: who builds the training and eval graphs
    (``edge_lbp.core.defaults.GRADIENTS``). ``edge_lbp.export_model`` takes the options' spellings.
    """
    import onnx

    from edge_lbp.export.lbp_rewrite import apply_lbp

    say = progress or (lambda line: None)
    # Everything that can be checked without the model is checked before the slow stages.
    if optimizer not in training.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(training.OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    training.check_gradients(gradients)
    if lbp.extra_tokens is not None and lbp.grid is None:
        raise ValueError("--extra-tokens only applies with --grid (the grid they precede)")
    refusal = method.NOT_FOR_ONNX
    if refusal and isinstance(model, (str, os.PathLike)) and (os.fspath(model).endswith(".onnx")
                                                               or Path(model).is_file()):
        raise ValueError(f"{os.fspath(model)}: {refusal}")
    say(f"forward ONNX from {_describe(model)}")
    forward, source, eval_forward = load_model(model, input_shape=input_shape, num_classes=num_classes,
                                               adapt=lambda module: method.adapt(module, num_classes))
    input_shape = source["input_shape"]
    if len(input_shape) == 2 and lbp.grid is None:
        raise ValueError(f"{source['source']}: the input is a token sequence (batch, {input_shape[0]}, "
                         f"{input_shape[1]}); give its grid with --grid HxW --extra-tokens E")
    # Images are normalised per channel; a token input is fed as it is (mean 0, std 1 per feature).
    mean_std = (_normalization(normalization, input_shape[0]) if len(input_shape) == 3 else
                _normalization(normalization or ([0.0] * input_shape[1], [1.0] * input_shape[1]), input_shape[1]))
    trainable, frozen = method.split(training.parameter_names(forward), forward)
    with tempfile.TemporaryDirectory(prefix="edge_lbp_export_") as tmp:
        say(f"training artifacts (--method {method.spec}, {optimizer}, --gradients {gradients})")
        with _native_stderr_silenced():
            result = training.generate_training_artifacts(forward, tmp, trainable, frozen, optimizer=optimizer,
                                                          gradients=gradients)
            if eval_forward is not None:
                _replace_eval_graph(eval_forward, tmp, method, optimizer, gradients)
        training_graph = onnx.load(result["training_model.onnx"])
        record = method.record(forward, training_graph, frozen)
        say(f"LBP rewrite ({lbp.spec})")
        rewritten, table = apply_lbp(training_graph, forward, input_shape, lbp)
        say(f"writing {out_dir}")
        manifest = writer.write_artifact(
            out_dir, forward=forward, training=rewritten, ort_dir=tmp, trainable=trainable, frozen=frozen,
            labels=result["labels"], lr=lr, model=source, trainable_set=method.trainable_set,
            lbp={"spec": lbp.spec, **dataclasses.asdict(lbp), "layers": table},
            normalization=mean_std, method=record)
    sizes = _parameter_sizes(forward)
    return Report(source=source["source"], out_dir=Path(out_dir), layers=table,
                  trainable=sum(sizes[n] for n in manifest["trainable"]),
                  frozen=sum(sizes[n] for n in manifest["frozen"]), size=writer.artifact_size(out_dir),
                  manifest=manifest)


def _replace_eval_graph(eval_forward, ort_dir, method, optimizer, gradients):
    """The eval graph from the eval-mode export: ORT derives it from the training-mode forward, where drop-path
    would draw random numbers at every evaluation. Parameter names are the same in both exports."""
    with tempfile.TemporaryDirectory(prefix="edge_lbp_eval_") as tmp:
        # Split on the eval-mode graph itself: its initializers need not be the training-mode graph's.
        trainable, frozen = method.split(training.parameter_names(eval_forward), eval_forward)
        training.generate_training_artifacts(eval_forward, tmp, trainable, frozen, optimizer=optimizer,
                                             gradients=gradients)
        shutil.copyfile(Path(tmp) / "eval_model.onnx", Path(ort_dir) / "eval_model.onnx")


def _describe(model):
    return model if isinstance(model, (str, os.PathLike)) else type(model).__name__


def load_model(model, *, input_shape=None, num_classes=None, adapt=None):
    """(forward ModelProto, source record, eval-mode forward or None) for any accepted ``model``; the record names
    the source, its kind, the input shape (C, H, W) and the number of classes. The eval-mode forward is there
    when the (training-mode) forward of a torch module draws random numbers (``onnx_export.draws_random``).
    ``adapt``: applied to the torch module before its export (LoRA adapters, the side network); an ONNX file
    cannot take it. An ONNX file needs neither torch nor ONNX Runtime."""
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".onnx"):
        if not Path(model).is_file():
            raise FileNotFoundError(f"{os.fspath(model)}: no such file")
        return _from_onnx(os.fspath(model), input_shape, num_classes)
    import torch

    if isinstance(model, torch.nn.Module):
        return _from_module(model, f"{type(model).__module__}.{type(model).__qualname__}", "module",
                            input_shape, num_classes, adapt)
    text = os.fspath(model)
    from edge_lbp.export import hf, models

    if text in models.PRESETS:
        return _from_preset(text, input_shape, num_classes, adapt)
    if text.startswith(hf.PREFIX):
        return _from_module(hf.load_checkpoint(text[len(hf.PREFIX):], num_classes), text, "hf", input_shape,
                            num_classes, adapt)
    if _FACTORY.fullmatch(text):
        return _from_module(_call_factory(text, num_classes), text, "factory", input_shape, num_classes, adapt)
    if Path(text).is_file():
        return _from_onnx(text, input_shape, num_classes)
    raise ValueError(f"unknown model {text!r}: not a preset ({', '.join(models.PRESETS)}), "
                     "a .onnx file, package.module:factory, or hf:PATH")


def _from_preset(name, input_shape, num_classes, adapt=None):
    import torch

    from edge_lbp.export import models

    overrides = {} if num_classes is None else {"num_classes": num_classes}
    if input_shape is not None:
        channels, height, width = input_shape
        if height != width:
            raise ValueError(f"preset {name} takes square images; got input shape {_shape_text(input_shape)}")
        overrides.update(in_chans=channels, img_size=height)
    # A fixed seed makes the exported initial weights, and so the artifact, reproducible.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = models.build_model(name, **overrides)
    return _from_module(module, name, "preset", None, num_classes, adapt)


def _call_factory(spec, num_classes):
    import torch

    module_name, attr = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load factory {spec!r}: {exc}") from None
    arguments = {} if num_classes is None else {"num_classes": num_classes}
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as exc:  # checked before the call, so a TypeError raised inside the factory is not masked
        given = "--num-classes" if arguments else "no arguments"
        raise ValueError(f"factory {spec!r} cannot be called with {given}: {exc}") from None
    module = factory(**arguments)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _from_module(module, source, kind, input_shape, num_classes, adapt=None):
    from edge_lbp.export import onnx_export

    from edge_lbp.export.hf import input_shape as config_input_shape
    from edge_lbp.export.mha import replace_multihead_attention

    config = getattr(module, "config", None)
    if input_shape is None and config is not None:
        input_shape = config_input_shape(config)
    if input_shape is None:
        raise ValueError(f"input shape of {source} is unknown; give it as C,H,W (--input-shape)")
    module, _ = replace_multihead_attention(module)  # ORT cannot differentiate nn.MultiheadAttention's export
    if adapt is not None:
        module = adapt(module)
    forward = onnx_export.export_forward(module, tuple(input_shape))
    eval_forward = None
    if onnx_export.draws_random(forward):
        eval_forward = onnx_export.export_forward(module, tuple(input_shape), training=False)
    return forward, _record(forward, source, kind, input_shape, num_classes, _family(config)), eval_forward


def _family(config):
    """The presets' family, or a Hugging Face ``model_type`` (vit, deit, swin)."""
    return getattr(config, "family", None) or getattr(config, "model_type", None)


def _from_onnx(path, input_shape, num_classes):
    """An image input (batch, C, H, W), or a token input (batch, N, C) whose grid ``--grid`` gives."""
    from edge_lbp.export import onnx_export

    forward = onnx_export.load_onnx(path)
    image = _single_input(forward, path)
    dims = image.type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
    if len(dims) == 3:
        if None in static or input_shape is not None:
            raise ValueError(f"{path}: token input {image.name!r} is (batch, {_shape_text(static)}); it needs fixed "
                             "N and C in the file (--input-shape is for images)")
        return forward, _record(forward, str(path), "onnx", static, num_classes, None), None
    if len(dims) != 4:
        raise ValueError(f"{path}: input {image.name!r} has rank {len(dims)}; expected (batch, C, H, W) or a token "
                         "input (batch, N, C) with --grid")
    if input_shape is None:
        if None in static:
            raise ValueError(f"{path}: input {image.name!r} has dynamic dims; give the shape as C,H,W (--input-shape)")
        input_shape = static
    for dim, have, want in zip(dims[1:], static, input_shape):
        if have is not None and have != want:
            raise ValueError(f"{path}: input {image.name!r} is {_shape_text(static)}, not {_shape_text(input_shape)}")
        dim.dim_value = want  # fixes dynamic spatial dims to the given shape; the batch stays dynamic
    return forward, _record(forward, str(path), "onnx", input_shape, num_classes, None), None


def _single_input(forward, path):
    initializers = {t.name for t in forward.graph.initializer}
    inputs = [v for v in forward.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{path}: the model has {len(inputs)} inputs; exactly one (the images) is supported")
    return inputs[0]


def _record(forward, source, kind, input_shape, num_classes, family):
    """The manifest's ``model`` entry; the class count is read from the logits and checked against the request."""
    (logits,) = forward.graph.output
    last = logits.type.tensor_type.shape.dim[-1] if logits.type.tensor_type.shape.dim else None
    classes = last.dim_value if last is not None and last.HasField("dim_value") else None
    if classes is not None and num_classes is not None and classes != num_classes:
        raise ValueError(f"{source}: the model outputs {classes} classes, not {num_classes}")
    classes = classes if classes is not None else num_classes
    if classes is None:
        raise ValueError(f"{source}: number of classes is unknown; give it with --num-classes")
    return {"source": source, "kind": kind, "family": family, "input_shape": [int(d) for d in input_shape],
            "num_classes": int(classes)}


def _normalization(normalization, channels):
    if normalization is None:
        mean, std = DEFAULT_MEAN_STD
        return [mean] * channels, [std] * channels
    mean, std = (list(map(float, v)) for v in normalization)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"normalization needs {channels} means and {channels} positive stds; got {mean}, {std}")
    return mean, std


def _parameter_sizes(forward):
    import math

    return {t.name: math.prod(t.dims) for t in forward.graph.initializer}


def _shape_text(shape):
    return ",".join("?" if d is None else str(d) for d in shape)


def parse_shape(text):
    """``"3,32,32"`` -> ``(3, 32, 32)``; a one-line ValueError otherwise."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"input shape {text!r} is not three positive integers C,H,W (e.g. 3,32,32)")
    return tuple(int(p) for p in parts)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: ORT's C++ graph transformers log every pass at INFO there, and
    ``onnxruntime.set_default_logger_severity`` does not reach that logger. Python-level errors still propagate
    as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
