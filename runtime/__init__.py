"""Device side: open an artifact folder with an engine and train it.

``load(artifact_dir, engine="auto" | "numba" | "ort")`` returns a :class:`~edge_lbp.runtime.session.Session`
(``train_step``, ``forward_backward``, ``optimizer_step``, ``eval_step``, ``parameters``, ``set_parameters``, a
settable ``lr``, and the ``capabilities`` it declares). The numba engine imports numpy, numba, onnx and safetensors
only; the ort engine needs onnxruntime-training.

Modules: ``artifact`` (the folder's format, reader and verifier), ``session`` (the engine contract),
``numba_session`` and ``ort_session`` (the engines), ``graph`` (the node-by-node executor), ``registry`` and
``kernels/`` (op kernels), ``passes`` (load-time graph passes), ``inference`` (the adapted model as plain ONNX).
"""
from edge_lbp.core.config import set_threads

ENGINES = ("numba", "ort")
AUTO = "auto"  # the device engine, numba


def load(artifact_dir, engine: str = AUTO, *, threads=None, verify: bool = True, seed: int = 0, zo=None):
    """Open an artifact folder with the chosen engine; ``threads`` fixes the Numba and BLAS thread count (default:
    up to all cores, the numba engine choosing per pass from measured times: ``runtime.threads``); ``seed``: what
    Dropout and drop-path draw from, and the ZO perturbations (numba engine; ``Session.seed``); ``zo``: the ZO
    hyper-parameters of a ``zo-hybrid`` artifact (``edge_lbp.core.zo.ZOConfig`` or a mapping; default its defaults)."""
    if engine == AUTO:
        engine = "numba"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)} (or {AUTO})")
    set_threads(threads)
    from edge_lbp.core.artifact import Artifact, training_method

    artifact = Artifact.open(artifact_dir, verify=verify)
    method = training_method(artifact.manifest)["name"]
    if method == "zo-hybrid":
        if engine != "numba":
            raise ValueError(f"{artifact_dir}: a zo-hybrid artifact trains on the numba engine only (the {engine} "
                             "engine would train the backprop part alone)")
        from edge_lbp.runtime.zo_session import ZOHybridSession

        return ZOHybridSession(artifact, seed, zo, threads)
    if zo is not None:
        raise ValueError(f"{artifact_dir}: ZO options apply to zo-hybrid artifacts; this one trains by {method} "
                         "(export it with --method zo-hybrid:K)")
    if engine == "numba":
        from edge_lbp.runtime.numba_session import NumbaSession

        return NumbaSession(artifact, seed, threads)
    from edge_lbp.runtime.ort_session import OrtSession

    return OrtSession(artifact, seed)


def __getattr__(name):
    # The reader imports onnx: only when asked for, so that the CLI's parser can read ENGINES cheaply.
    if name in ("Artifact", "ArtifactError"):
        from edge_lbp.core import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module 'edge_lbp.runtime' has no attribute {name!r}")


__all__ = ["AUTO", "Artifact", "ArtifactError", "ENGINES", "load"]
