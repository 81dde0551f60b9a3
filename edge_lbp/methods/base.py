"""What a training method is, as the exporter, the engines and the application ask it.

A method is parsed from its spelling (``--method``; :func:`edge_lbp.methods.parse`) or read back from an artifact's
manifest (:func:`edge_lbp.methods.of_manifest`). On the workstation it says how the model is adapted before the
export (``adapt``), which parameters the training graph trains (``split``), what the manifest records
(``trainable_set``, ``record``); on the device, which session trains the artifact (``open_session``) and how the
adapted model is folded into a plain inference graph (``fold``). The LBP rewrite of the backward is not a method:
it applies to whatever backprop a method does (``--lbp``, :mod:`edge_lbp.methods.lbp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:  # the CLI's parser reads the methods' spellings: no numpy or onnx at import
    import numpy as np
    import onnx


@dataclass(frozen=True)
class StepMemory:
    """What ``edge-lbp plan`` measured on an artifact that backpropagates through every block, at one batch size:
    what a method's :meth:`Method.estimate` starts from (bytes)."""

    inference: int  # an evaluation step's peak
    working: int  # the training step's peak beyond the activations it holds when the backward starts
    held: Dict[Optional[int], int]  # those activations by block index (None: outside the blocks)
    block_output: int  # one block's output (B x N x C); 0 when the graph has no /blocks.0/ node
    parameters: Dict[str, int]  # every parameter's size
    state_copies: int  # per parameter trained by backprop: its gradient and the optimizer's moments

    @property
    def depth(self) -> int:
        return 1 + max((b for b in self.held if b is not None), default=-1)


class Method:
    SYNTAX: ClassVar[str]  # how the option spells it, for help texts and errors ("lora:R")
    name: ClassVar[str] = "backprop"  # the manifest's method name; "backprop" is recorded as no method at all

    spec: str  # this method as the user spelled it, normalised ("lora:8")
    NOT_FOR_ONNX: ClassVar[Optional[str]] = None  # why an ONNX file (no torch module to adapt) cannot take it
    # Options on the device: a frozen dataclass with ``of(mapping)`` and ``record()`` (each field's metadata
    # ``help`` for the CLI's ``--<OPTION_PREFIX>-<field>``), or None for a method that takes none.
    OPTIONS: ClassVar[Optional[type]] = None
    OPTION_PREFIX: ClassVar[str] = ""
    # The spelling ``edge-lbp plan`` estimates from another artifact's step ({blocks}: plan's --zo-blocks), or None
    # for a method that needs its own graphs to be measured.
    PLANNED: ClassVar[Optional[str]] = None

    # -- workstation ---------------------------------------------------------------------------------------------
    def adapt(self, model, num_classes=None):
        """The torch module to export instead of ``model`` (adapters, a side network); ``model`` by default."""
        return model

    def split(self, names: List[str], forward: onnx.ModelProto) -> Tuple[List[str], List[str]]:
        """``(trained by backprop, frozen)`` parameter names, both in ``names``' order."""
        raise NotImplementedError

    @property
    def trainable_set(self) -> str:
        """The manifest's ``trainable_set`` entry."""
        return self.spec

    def record(self, forward: onnx.ModelProto, training: onnx.ModelProto, frozen: Iterable[str]) -> Optional[dict]:
        """The manifest's ``method`` entry (None: plain backprop of the trainable set)."""
        return None

    # -- device --------------------------------------------------------------------------------------------------
    def open_session(self, artifact, engine: str, *, seed: int, threads, options=None):
        """The session that trains an artifact of this method on ``engine``; ``options``: the method's device
        options (a mapping of its ``OPTIONS`` fields), refused by a method that takes none."""
        from edge_lbp.runtime import open_engine

        if options:
            raise ValueError(f"{artifact.folder}: this artifact trains by --method {self.spec}, which takes no "
                             f"options on the device (given: {', '.join(sorted(options))})")
        return open_engine(artifact, engine, seed=seed, threads=threads)

    def fold(self, graph: onnx.ModelProto, params: Dict[str, np.ndarray]):
        """``(graph, parameters)`` of the plain inference model; unchanged unless the method adds to the model."""
        return graph, params

    # -- planning ------------------------------------------------------------------------------------------------
    def estimate(self, memory: StepMemory) -> Optional[Tuple[int, int]]:
        """``(step, state)`` bytes of this method, estimated from another artifact's measured step (methods with
        ``PLANNED``); None where that step cannot tell (a model too shallow for it)."""
        return None


def choose(names: List[str], chosen, what: str) -> Tuple[List[str], List[str]]:
    """``split``'s result for the set ``chosen``; a one-line error when it is empty."""
    if not chosen:
        raise ValueError(f"{what} selects no parameter of this model")
    return [n for n in names if n in chosen], [n for n in names if n not in chosen]
