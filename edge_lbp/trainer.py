"""Training on the device: ``Trainer`` (schedules, accumulation, clipping, history, checkpoints, evaluation).

Device side: numpy and the engine only (torch and onnxruntime are never imported here; the ``ort`` engine
imports onnxruntime itself when asked for).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_lbp import longtail
from edge_lbp.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, locked, save_checkpoint
from edge_lbp.data import Dataset, batches, num_batches
from edge_lbp.memory import check_step_fits
from edge_lbp.runtime.session import NonFiniteStep
from edge_lbp.schedule import SCHEDULES, schedule_lr
from edge_lbp.status import ExitStatus, Stopped, stop_signals


class DivergenceWarning(UserWarning):
    """A training step was rejected because its loss or gradients were not finite."""


class DivergenceError(RuntimeError):
    """Too many steps in a row were rejected, or the run ended on a rejected step: the run stops, with the
    parameters of the last good update (and its checkpoint, the last one saved after a good step)."""

    exit_status = ExitStatus.DIVERGED


class Trainer:
    """Adapts an artifact to data: one optimizer update per ``step`` (or per ``accumulate`` steps), ``fit`` over
    epochs, ``evaluate``, ``save`` / ``resume``.

    ``engine``: ``auto`` (= ``numba``, the device engine) or ``ort``; ``lr``: the peak learning rate (default:
    the artifact's); ``schedule``: ``constant`` or ``cosine``, per optimizer update, after ``warmup_steps``
    linear warm-up updates; ``total_steps``: the cosine's length (default: what ``fit`` will run);
    ``accumulate``: micro-batches per update, the update using their mean gradient; ``clip_norm``: scale the
    (mean) gradient down to this global L2 norm when above it (numba engine); ``seed``: data order and
    augmentation in ``fit``, and the numba engine's Dropout and drop-path draws; ``max_rejected``: a step whose
    loss or gradients are not finite is rejected before the optimizer runs (a :class:`DivergenceWarning`), and
    after this many in a row the run stops with a :class:`DivergenceError`; ``method_options``: the artifact's
    method's options on the device, a mapping (zo-hybrid: ``edge_lbp.core.zo.ZOConfig``'s fields; its ``lr``
    follows the same schedule). ``zo=`` is its deprecated spelling.
    """

    def __init__(self, artifact_dir, *, engine: str = "auto", threads=None, lr=None, schedule: str = "constant",
                 warmup_steps: int = 0, accumulate: int = 1, clip_norm=None, seed: int = 0, total_steps=None,
                 max_rejected: int = 10, method_options=None, zo=None):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if int(accumulate) < 1 or int(warmup_steps) < 0 or int(seed) < 0 or int(max_rejected) < 1:
            raise ValueError(f"accumulate >= 1, warmup_steps >= 0, seed >= 0, max_rejected >= 1 needed; got "
                             f"{accumulate}, {warmup_steps}, {seed}, {max_rejected}")
        for name, value in (("lr", lr), ("clip_norm", clip_norm)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number; got {value}")
        import edge_lbp

        if zo is not None:
            if method_options is not None:
                raise ValueError("give method_options alone (zo= is its deprecated spelling)")
            warnings.warn("deprecated: Trainer(zo=...) is Trainer(method_options=...)", FutureWarning, stacklevel=2)
            method_options = zo
        self.session = edge_lbp.load(artifact_dir, engine, threads=threads, seed=seed, method_options=method_options)
        options = self.session.method_options
        self.method_options = options.record() if options is not None else None
        if clip_norm is not None and not self.session.capabilities.gradients:
            raise ValueError(f"clip_norm needs the numba engine: the {self.session.engine} engine keeps its "
                             "gradients inside ONNX Runtime, out of reach for scaling")
        self.artifact_dir = str(Path(artifact_dir).resolve())
        self.peak_lr = float(lr) if lr is not None else self.session.optimizer.lr
        self.schedule, self.warmup_steps, self.total_steps = schedule, int(warmup_steps), total_steps
        self.accumulate, self.clip_norm, self.seed = int(accumulate), clip_norm, int(seed)
        self.max_rejected = int(max_rejected)
        self.rejected = 0  # steps rejected for a non-finite loss or gradient, in this process
        self._in_a_row = 0
        self.updates = 0  # optimizer updates done: the schedule's position
        self.epoch = 0  # the epoch in progress (0-based)
        self.batch = 0  # batches of that epoch already trained on
        self.history = []  # one record per finished epoch
        self.saved_at = None  # (epoch, batch) of the checkpoint last saved or resumed from
        self.step_times = []  # seconds of each step() call in this process (timing only: not checkpointed)
        self.classes = None  # class names of the training data (set by fit), saved so evaluation agrees
        self.grad_norm = None  # global gradient norm of the last update before clipping (when clip_norm is set)
        self._micro = 0  # micro-batches accumulated since the last update
        self._fit_total = None  # the cosine's length as fit derived it
        self._running = _fresh_epoch()
        self._stop = None  # the stop signal received during fit, if any

    @property
    def manifest(self) -> dict:
        return self.session.artifact.manifest

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer update."""
        return self._lr_at(self.updates)

    def _lr_at(self, update: int) -> float:
        total = self.total_steps if self.total_steps is not None else self._fit_total
        return schedule_lr(update, peak=self.peak_lr, schedule=self.schedule, warmup_steps=self.warmup_steps,
                           total_steps=total)

    def step(self, x, y) -> float:
        """Forward and backward on one batch, returning its loss; the optimizer updates on every
        ``accumulate``-th call (the calls in between only add up gradients)."""
        started = time.perf_counter()
        loss = self.session.forward_backward(x, y, accumulate=self._micro > 0)
        try:
            self.session.check_finite(loss, gradients=False)  # gradients: once per update, in _update
            self._micro += 1
            if self._micro == self.accumulate:
                self._update()
        except NonFiniteStep as err:
            self._reject(err)
        else:
            self._in_a_row = 0
        self.step_times.append(time.perf_counter() - started)
        return loss

    def _reject(self, err: NonFiniteStep) -> None:
        # The gradient buffers hold the non-finite sum: the accumulation in progress is dropped, and the next
        # step overwrites them. The parameters and moments are untouched (the optimizer never ran).
        self._micro = 0
        self.rejected += 1
        self._in_a_row += 1
        where = f"epoch {self.epoch + 1}, batch {self.batch + 1}"
        if self._in_a_row >= self.max_rejected:
            raise DivergenceError(f"{self._in_a_row} steps in a row rejected, last in {where} ({err}): stopping "
                                  "with the parameters of the last good update; lower the learning rate or check "
                                  "the data")
        warnings.warn(f"{where}: {err} ({self._in_a_row} in a row, {self.rejected} in all)", DivergenceWarning)

    def _update(self) -> None:
        self.session.check_finite()  # raises before anything is scaled or updated
        scale = 1.0 / self._micro  # the engines sum micro-batch gradients; the update uses their mean
        if self.clip_norm is not None:  # the numba engine's (checked in __init__)
            squares = sum(float(np.square(g, dtype=np.float64).sum()) for g in self.session.gradients().values())
            self.grad_norm = scale * math.sqrt(squares)
            if self.grad_norm > self.clip_norm:
                scale *= self.clip_norm / self.grad_norm
        self.session.optimizer.set_learning_rate(self.lr, peak=self.peak_lr)
        self.session.optimizer.step(gradient_scale=scale)
        self.updates += 1
        self._micro = 0

    def evaluate(self, data, *, batch_size: int = 64, train_counts=None) -> dict:
        """``{"loss", "accuracy", "samples", "per_class"}`` over ``data``: a ``Dataset`` or an iterable of ``(x, y)``
        batches. The loss is the mean cross-entropy per sample; ``per_class`` the accuracy of each class (None
        for a class without samples). With ``train_counts`` (the training images of each class, e.g.
        ``longtail.class_counts(train.labels)``) also ``groups``: the accuracy on the many-, medium- and few-shot
        classes (``edge_lbp.longtail``)."""
        if isinstance(data, Dataset):
            data = batches(data, batch_size, shuffle=False)
        loss, correct, samples = 0.0, 0, 0
        for x, y in data:
            logits = np.asarray(self.session.eval_step(x), np.float64)
            y = np.asarray(y, np.int64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss -= float(log_probs[np.arange(len(y)), y].sum())
            # Every count has one entry per class (the labels are below it: log_probs' indexing would fail).
            correct = correct + np.bincount(y, weights=logits.argmax(axis=1) == y, minlength=logits.shape[1])
            samples = samples + np.bincount(y, minlength=logits.shape[1])
        if not np.sum(samples):
            raise ValueError("no samples to evaluate")
        metrics = {"loss": loss / samples.sum(), "accuracy": correct.sum() / samples.sum(),
                   "samples": int(samples.sum()),
                   "per_class": [c / n if n else None for c, n in zip(correct.tolist(), samples.tolist())]}
        if train_counts is not None:
            metrics["groups"] = longtail.accuracy_by_group(correct.tolist(), samples.tolist(),
                                                           longtail.shot_groups(train_counts))
        return metrics

    def fit(self, train, val=None, *, epochs: int = 1, batch_size: int = 32, augment: bool = True, callbacks=(),
            checkpoint=None, checkpoint_every=None, progress=True) -> list:
        """Train until ``epochs`` epochs are done (a resumed trainer continues where it stopped); return the
        history: per epoch ``{epoch, train_loss (mean batch loss), val_loss, val_accuracy, lr (of the epoch's
        last update), seconds}``.

        ``train``: a ``Dataset`` (shuffled and, with ``augment``, augmented from ``seed`` and the epoch) or a
        re-iterable of ``(x, y)`` batches. ``val``: the same kinds, or ``None``. ``callbacks``: called as
        ``callback(trainer, record)`` after each epoch. ``checkpoint``: a folder saved after every epoch, and
        at the next update boundary on Ctrl-C or SIGTERM, after which ``fit`` raises ``edge_lbp.status.Stopped``
        (a ``KeyboardInterrupt`` naming the signal; a second signal stops at once). ``checkpoint_every``: also
        save after every N-th optimizer update (``updates``: one per ``accumulate`` batches; a rejected step is
        none, so a checkpoint always follows an accepted one). A run that ends on a rejected step raises
        ``DivergenceError`` after its last epoch: its end is not saved, and nothing says it converged.
        ``progress``: a bar on stderr when it is a terminal; ``"always"`` forces it.
        """
        if int(epochs) < 1 or int(batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be at least 1; got {epochs}, {batch_size}")
        if checkpoint is not None:
            self._check_checkpointable()
        if checkpoint_every is not None and (checkpoint is None or int(checkpoint_every) < 1):
            raise ValueError(f"checkpoint_every needs a checkpoint folder and must be at least 1; got "
                             f"{checkpoint_every}")
        self._stop = None  # a signal that came after the last step of an earlier fit is not for this one
        if isinstance(train, Dataset):
            if len(set(train.labels.tolist())) < 2:
                warnings.warn(f"{train.source}: every training sample has the same label: the model learns to "
                              "answer that class")
            if self.classes is not None and list(train.classes) != self.classes:
                raise ValueError(f"{train.source}: classes {train.classes[:5]}... differ from the trainer's "
                                 f"{self.classes[:5]}... (open the data with classes=trainer.classes)")
            self.classes = list(train.classes)
            per_epoch = num_batches(train, batch_size)
        else:
            per_epoch = len(train) if hasattr(train, "__len__") else None
        if self.schedule == "cosine" and self.total_steps is None:
            if per_epoch is None:
                raise ValueError("the cosine schedule needs total_steps when the data has no length")
            self._fit_total = epochs * math.ceil(per_epoch / self.accumulate)
        if not self._micro:
            check_step_fits(self.session, min(batch_size, len(train)) if isinstance(train, Dataset) else batch_size)
        # One writer per checkpoint folder for the whole run; taking the lock also proves the folder writable
        # before the first step rather than after the first epoch.
        with self._deferred_interrupt(), (locked(checkpoint) if checkpoint is not None else contextlib.nullcontext()):
            while self.epoch < epochs:
                self._train_epoch(train, batch_size, augment, per_epoch, f"epoch {self.epoch + 1}/{epochs}",
                                  progress, (checkpoint, checkpoint_every))
                if self._stop:
                    signum, self._stop = self._stop, None
                    if checkpoint is not None:
                        self.save(checkpoint)
                    raise Stopped(signum, f"stopped in epoch {self.epoch + 1} after batch {self.batch}")
                record = self._end_epoch(val, batch_size)
                if checkpoint is not None and self._in_a_row:
                    # Parameters right after a rejected step are suspect: keep the last checkpoint instead.
                    warnings.warn(f"{checkpoint}: not saved after epoch {record['epoch']}, whose last step was "
                                  "rejected; the previous checkpoint stays", DivergenceWarning)
                elif checkpoint is not None:
                    self.save(checkpoint)
                for callback in callbacks:
                    callback(self, record)
        if self._in_a_row:
            self._diverged_at_the_end(checkpoint)
        return self.history

    def _diverged_at_the_end(self, checkpoint) -> None:
        kept = (f"{checkpoint} holds the last checkpoint saved after a good step" if checkpoint is not None
                and has_checkpoint(checkpoint) else "no checkpoint was saved" if checkpoint is not None
                else "its parameters are those of the last good update")
        raise DivergenceError(f"the run ended on a rejected step ({self._in_a_row} in a row, {self.rejected} "
                              f"rejected in all): {kept}; lower the learning rate or check the data")

    def _train_epoch(self, train, batch_size, augment, per_epoch, label, progress, periodic) -> None:
        folder, every = periodic
        if isinstance(train, Dataset):
            data = batches(train, batch_size, shuffle=True, augment=augment, seed=self.seed, epoch=self.epoch,
                           start=self.batch)
        else:
            data = itertools.islice(train, self.batch, None)
        running = self._running
        started = time.perf_counter() - running["seconds"]
        # disable=None is tqdm's "only on a terminal": redirected output (a log, CI, the CLI's one-line errors)
        # gets no carriage returns.
        bar = tqdm(total=per_epoch, initial=self.batch, desc=label, file=sys.stderr, leave=False, unit="batch",
                   disable=False if progress == "always" else (None if progress else True), mininterval=0.1)
        try:
            for x, y in data:
                updates = self.updates
                loss = self.step(x, y)
                self.batch += 1
                if math.isfinite(loss):  # a rejected step's loss is not part of the epoch's mean
                    running["loss_sum"] += loss
                    running["batches"] += 1
                bar.set_postfix(loss=f"{running['loss_sum'] / max(1, running['batches']):.4g}",
                                lr=f"{self._last_lr():.3g}", refresh=False)
                bar.update(1)
                # checkpoint_every's save: after an update (so an accepted step) whose count it divides, and after
                # the running sums (its position includes this batch); an epoch's last batch has the epoch's save.
                running["seconds"] = time.perf_counter() - started
                if every and self.updates > updates and self.updates % every == 0 and self.batch != per_epoch:
                    self.save(folder)
                if self._stop and self._micro == 0:  # a checkpoint holds no half-accumulated gradients
                    break
            else:
                if self._micro:  # the epoch's last, incomplete accumulation still counts
                    try:
                        self._update()
                    except NonFiniteStep as err:
                        self._reject(err)
        finally:
            bar.close()
            running["seconds"] = time.perf_counter() - started

    def _end_epoch(self, val, batch_size) -> dict:
        started = time.perf_counter()
        running = self._running
        record = {"epoch": self.epoch + 1, "train_loss": running["loss_sum"] / max(1, running["batches"]),
                  "val_loss": None, "val_accuracy": None, "lr": self._last_lr()}
        if val is not None:
            metrics = self.evaluate(val, batch_size=batch_size)
            record.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"])
        record["seconds"] = running["seconds"] + time.perf_counter() - started
        self.history.append(record)
        self.epoch, self.batch, self._running = self.epoch + 1, 0, _fresh_epoch()
        return record

    def _last_lr(self) -> float:
        """The scheduled learning rate of the latest update (of the next one before any)."""
        return self._lr_at(max(0, self.updates - 1))

    def _deferred_interrupt(self):
        """Ctrl-C or SIGTERM during fit asks it to stop at the next update boundary, where the state is whole; a
        step cut in half (parameters updated in place) could not be saved or continued."""

        def handler(signum, frame):
            if self._stop:
                raise Stopped(signum)
            self._stop = signum

        return stop_signals(handler)

    def _check_checkpointable(self) -> None:
        if not self.session.capabilities.optimizer_state:
            raise ValueError(f"checkpoints need the numba engine: the {self.session.engine} engine does not expose "
                             "its optimizer moments")

    def save(self, checkpoint_dir) -> Path:
        """Write a checkpoint (parameters, optimizer moments, schedule and data position, history) atomically."""
        self._check_checkpointable()
        if self._micro:
            raise ValueError(f"{self._micro} micro-batch(es) of an accumulation are pending; save after the update")
        training = self.session.state
        params, state = training.parameters(), training.optimizer_state()
        tensors = {f"param/{n}": params[n] for n in training.trained}
        # Moments and the method's entries share one namespace of "<entry>/<name>" tensors (older checkpoints
        # held the energy:r bases among the optimizer's entries, under the same names).
        for entry, arrays in [*state.items(), *training.method_state().items()]:
            if entry != "step":
                tensors.update((f"{entry}/{n}", a) for n, a in arrays.items())
        metadata = {
            "artifact": self.artifact_dir,
            "artifact_fingerprint": self.session.artifact.fingerprint,
            "config": {"lr": self.peak_lr, "schedule": self.schedule, "warmup_steps": self.warmup_steps,
                       "total_steps": self.total_steps, "accumulate": self.accumulate, "clip_norm": self.clip_norm,
                       "seed": self.seed, "max_rejected": self.max_rejected,
                       "method_options": self.method_options},
            "position": {"updates": self.updates, "optimizer_step": state["step"], "epoch": self.epoch,
                         "batch": self.batch, "running": self._running},
            "classes": self.classes,
            "history": self.history,
        }
        path = save_checkpoint(checkpoint_dir, tensors, metadata)
        self.saved_at = (self.epoch, self.batch)
        return path

    @classmethod
    def resume(cls, checkpoint_dir, artifact_dir=None, *, engine: str = "auto", threads=None) -> "Trainer":
        """A trainer continuing the checkpoint exactly: same hyper-parameters, parameters, optimizer moments,
        schedule position, data position and history. ``artifact_dir``: default, the one recorded at saving."""
        tensors, meta = load_checkpoint(checkpoint_dir)
        try:
            position = _check_position(meta["position"], checkpoint_dir)
            config = dict(meta["config"])
            if "zo" in config:  # the previous release's name of method_options
                config["method_options"] = config.pop("zo")
            trainer = cls(artifact_dir or meta["artifact"], engine=engine, threads=threads, **config)
            trainer._check_checkpointable()
            trainer._check_same_artifact(checkpoint_dir, meta, tensors)
            trainer._load_parameters(checkpoint_dir, tensors)
            training = trainer.session.state  # its entries name what the checkpoint must hold
            training.set_optimizer_state({"step": position["optimizer_step"],
                                          **_saved(tensors, training.optimizer_state())})
            training.set_method_state(_saved(tensors, training.method_state()))
            trainer.updates, trainer.epoch, trainer.batch = position["updates"], position["epoch"], position["batch"]
            trainer.saved_at = (trainer.epoch, trainer.batch)
            trainer._running = dict(position["running"])
            trainer.classes, trainer.history = meta["classes"], list(meta["history"])
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{checkpoint_dir}: incomplete checkpoint (no {err})") from None
        return trainer

    def _check_same_artifact(self, checkpoint_dir, meta, tensors) -> None:
        """A checkpoint resumes only the artifact it was saved from: another trainable set would drop (or
        invent) trained tensors, another graph would continue a different model."""
        saved = sorted(k[len("param/"):] for k in tensors if k.startswith("param/"))
        if saved != sorted(self.session.state.trained):
            raise CheckpointError(f"{checkpoint_dir}: saved with {len(saved)} trainable tensors, {self.artifact_dir} "
                                  f"trains {len(self.session.state.trained)} (another --method?); resume "
                                  "with the artifact it was saved from")
        recorded = meta.get("artifact_fingerprint")
        if recorded is not None and recorded != self.session.artifact.fingerprint:
            raise CheckpointError(f"{checkpoint_dir}: saved from another artifact than {self.artifact_dir} (its "
                                  "files differ); resume with the artifact it was saved from")

    def load_parameters(self, checkpoint_dir) -> dict:
        """Only the checkpoint's parameters and class names, e.g. to evaluate it (any engine); returns its
        metadata."""
        tensors, meta = load_checkpoint(checkpoint_dir)
        self._check_same_artifact(checkpoint_dir, meta, tensors)
        self._load_parameters(checkpoint_dir, tensors)
        self.classes = meta.get("classes")
        return meta

    def predict(self, images, **options) -> list:
        """``Predictor.predict`` with this trainer's parameters and class names."""
        from edge_lbp.predict import Predictor

        return Predictor(self.session, self.classes).predict(images, **options)

    def export_inference(self, path, *, preprocess: bool = False) -> Path:
        """``edge_lbp.methods.export_inference`` of this trainer's session, naming its classes."""
        from edge_lbp.methods import export_inference

        return export_inference(self.session, path, classes=self.classes, preprocess=preprocess)

    def _load_parameters(self, checkpoint_dir, tensors) -> None:
        names = self.session.state.trained
        missing = [n for n in names if f"param/{n}" not in tensors]
        if missing:
            raise CheckpointError(f"{checkpoint_dir}: no values for parameters {missing[:3]} of "
                                  f"{self.artifact_dir} (saved from another artifact?)")
        self.session.state.set_parameters({n: tensors[f"param/{n}"] for n in names})


def _check_position(position, checkpoint_dir) -> dict:
    for key in ("updates", "optimizer_step", "epoch", "batch"):
        value = position[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{checkpoint_dir}: position {key} is {value!r}, not a count")
    return position


def _saved(tensors, entries) -> dict:
    """The checkpoint's ``<entry>/<name>`` tensors for each entry (but ``step``) of a state's ``entries``."""
    return {e: {n: tensors[f"{e}/{n}"] for n in arrays} for e, arrays in entries.items() if e != "step"}


def _fresh_epoch() -> dict:
    """The running sums of the epoch in progress (saved, so a resumed epoch reports the same train loss)."""
    return {"loss_sum": 0.0, "batches": 0, "seconds": 0.0}
