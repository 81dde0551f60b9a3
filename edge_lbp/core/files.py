"""File helpers shared by the artifact writer and reader, the checkpoints and the commands."""
import hashlib
import os
import tempfile
from pathlib import Path


def sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (artifacts hold graphs of hundreds of MB)."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path, *, folder: bool = False) -> Path:
    """Fail now, in one line, when ``path`` (a file to write; with ``folder``, a folder to write into) cannot be
    written, so that a long run never ends with its result lost. Missing parent folders are created."""
    path = Path(path)
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file path")
    existing = next(p for p in (where, *where.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot be written ({existing} is a file, not a folder)")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise OSError(f"{path}: cannot be written ({err.strerror or err})") from None
    return path


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    current = os.umask(0)
    os.umask(current)
    return current
