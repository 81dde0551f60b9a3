"""Device side: open an artifact folder with an engine and train it.

``open_engine(artifact, engine="auto" | "numba" | "ort")`` returns a :class:`~edge_lbp.runtime.session.Session`,
split as ONNX Runtime's training API: the session runs steps (``train_step``, ``forward_backward``, ``eval_step``,
``gradients``, the memory probe, the ``capabilities`` it declares), ``session.state`` holds what a checkpoint holds
(``parameters``, ``set_parameters``, ``optimizer_state``, ``method_state``) and ``session.optimizer`` updates
(``lr``, ``kind``, ``set_learning_rate``, ``step``). The numba engine imports numpy, numba, onnx and safetensors
only; the ort engine needs onnxruntime-training.

The artifact's format and reader are the core's (``edge_lbp.core.artifact``); which session an artifact's method
needs is the method's (``edge_lbp.load``). Modules: ``session`` (the engine contract),
``numba_session`` and ``ort_session`` (the engines), ``graph`` (the node-by-node executor), ``registry`` and
``kernels/`` (op kernels), ``passes`` (load-time graph passes), ``inference`` (the adapted model as plain ONNX).
"""
from edge_lbp.core.config import set_threads

ENGINES = ("numba", "ort")
AUTO = "auto"  # the device engine, numba


def check_engine(engine: str) -> str:
    """``engine`` with ``auto`` resolved; a one-line ValueError for an unknown one."""
    if engine == AUTO:
        engine = "numba"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)} (or {AUTO})")
    return engine


def open_engine(artifact, engine: str = AUTO, *, seed: int = 0, threads=None):
    """A session of ``engine`` on an opened :class:`~edge_lbp.core.artifact.Artifact`; it trains what the training
    graph trains. ``threads`` fixes the Numba and BLAS thread count (default: up to all cores, the numba engine
    choosing per pass from measured times: ``runtime.threads``); ``seed``: what Dropout and drop-path draw from
    (numba engine; ``Session.seed``). Which session an artifact's method needs is the method's to say:
    ``edge_lbp.load`` opens any artifact."""
    engine = check_engine(engine)
    set_threads(threads)
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


__all__ = ["AUTO", "Artifact", "ArtifactError", "ENGINES", "check_engine", "open_engine"]
