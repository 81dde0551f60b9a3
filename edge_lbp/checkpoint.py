"""Training checkpoints: one folder holding a safetensors tensor file and ``checkpoint.json``.

Layout::

    checkpoint.json               format, version, the tensor file's name and SHA-256, ``metadata`` (the caller's)
    tensors-<random>.safetensors  named float32 arrays (parameters, optimizer moments)

Saving is atomic at every instant: the new tensor file is written under a fresh name, then ``checkpoint.json``
is replaced in one ``os.replace`` (the commit point), then the previous tensor file is removed. A crash leaves
either the old checkpoint or the new one, never a mix; a damaged file is reported in one line on loading. A
write that fails before the commit point (a full disk, a file-size limit) removes what it wrote and raises
:class:`CheckpointWriteError`, the previous checkpoint untouched. A tensor holding NaN or infinity is never saved
(the last good checkpoint stays) and is refused on loading.

One checkpoint per folder: each save replaces the previous one (a board's disk is small).

One writer at a time: :func:`locked` holds an exclusive ``flock`` on ``<folder>/.lock`` (the kernel releases it
when the holding process dies, so a dead run's lock is taken over without a word), and every save takes it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from edge_lbp.core.files import sha256, umask
from edge_lbp.status import ExitStatus

FORMAT = "edge_lbp.checkpoint"
VERSION = 1
METADATA = "checkpoint.json"
LOCK = ".lock"
_HELD: Dict[Path, int] = {}  # folder -> descriptor of each lock this process holds (locked() is re-entrant)


class CheckpointError(ValueError):
    """The folder holds no usable checkpoint; the message names the file and what is wrong."""


class CheckpointWriteError(OSError):
    """A save failed midway (a full disk, a file-size limit); the folder keeps its previous checkpoint."""

    exit_status = ExitStatus.ERROR  # the disk's fault, not the input's, whatever the OS error


def save_checkpoint(folder, tensors: Dict[str, np.ndarray], metadata: dict) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``metadata`` to ``folder`` (created if needed)."""
    folder = Path(folder)
    bad = next((k for k, v in tensors.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{folder}: not saved: {bad} holds NaN or infinite values (the last good checkpoint "
                              "there is kept)")
    with locked(folder):
        return _save(folder, tensors, metadata)


def _save(folder: Path, tensors, metadata) -> Path:
    from safetensors import SafetensorError

    name = f"tensors-{secrets.token_hex(4)}.safetensors"
    writing = folder / name
    try:
        _write_tensors(writing, tensors)
        record = {"format": FORMAT, "version": VERSION, "tensors": name, "sha256": sha256(writing),
                  "metadata": metadata}
        writing = folder / METADATA
        _write_atomic(writing, json.dumps(record, indent=1) + "\n")
    except (OSError, SafetensorError) as err:  # safetensors reports its I/O errors as its own type
        (folder / name).unlink(missing_ok=True)  # not committed: nothing refers to it
        kept = "the previous checkpoint there is kept" if has_checkpoint(folder) else "nothing is saved there yet"
        raise CheckpointWriteError(f"{writing}: writing failed ({err}): checkpoint not saved, {kept}") from None
    _fsync(folder)  # the commit's rename itself reaches the disk
    # Earlier saves, now unreferenced, and temporaries an interrupted save left behind.
    for old in [*folder.glob("tensors-*.safetensors"), *folder.glob(".tensors-*.tmp"), *folder.glob(f".{METADATA}.*")]:
        if old.name != name:
            old.unlink()
    return folder


def _write_tensors(path: Path, tensors) -> None:
    """``tensors`` written under a staging name, synced, then renamed to ``path`` (no partial file under it)."""
    from safetensors.numpy import save_file

    staging = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(staging))
        os.chmod(staging, 0o666 & ~umask())  # safetensors writes 0600
        _fsync(staging)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, path)


def load_checkpoint(folder) -> Tuple[Dict[str, np.ndarray], dict]:
    """``(tensors, metadata)`` of the checkpoint in ``folder``, checked against its recorded SHA-256."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    record = _record(folder)
    tensor_path = folder / Path(str(record.get("tensors"))).name  # a bare name: never leave the folder
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: listed in {METADATA} but missing (partial copy?)")
    if sha256(tensor_path) != record.get("sha256"):
        raise CheckpointError(f"{tensor_path}: checksum mismatch (the file is damaged or was changed)")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{tensor_path}: not a readable safetensors file ({err})") from None
    bad = next((k for k, v in tensors.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{tensor_path}: {bad} holds NaN or infinite values; this checkpoint cannot be used")
    return tensors, record["metadata"]


def checkpoint_metadata(folder) -> dict:
    """The ``metadata`` of the checkpoint in ``folder`` alone (its tensors neither read nor checked)."""
    return _record(Path(folder))["metadata"]


def _record(folder: Path) -> dict:
    path = folder / METADATA
    if not path.is_file():
        raise CheckpointError(f"{folder}: no checkpoint here ({METADATA} is missing)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: damaged, not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "metadata" not in record:
        raise CheckpointError(f"{path}: not an edge_lbp checkpoint")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {record.get('version')!r}, this edge_lbp reads {VERSION}")
    return record


def has_checkpoint(folder) -> bool:
    return (Path(folder) / METADATA).is_file()


@contextlib.contextmanager
def locked(folder):
    """Hold ``folder``'s exclusive writer lock (created with the folder if needed) for the ``with`` block; another
    process holding it makes this raise one line naming that process."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CheckpointError(f"{folder}: in use by another training run (process {holder}); wait for it to end "
                              "or choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race with the next writer's open)


def _write_atomic(path: Path, text: str) -> None:
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(staging, 0o666 & ~umask())  # mkstemp makes it 0600; a checkpoint is as readable as any file
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    # A power cut on a board is common; without fsync the rename could land before the data it names.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


