"""``edge-lbp plan``: the peak memory of each training method at a batch size, from one artifact, and which fit.

The artifact is loaded on the numba engine and one inference step warms its kernels; the process's RSS then is the
**baseline** every method shares (Python, numpy, Numba and its kernels, the graphs, the parameters). On top of it:

- the **step**: the intermediates a step holds at its peak, from the engine's memory probe (``LiveBytes`` on runs at
  batch 1 and 2, extrapolated per node). The artifact's own method and inference are measured so; the other
  methods estimate themselves (``Method.estimate`` in ``edge_lbp.methods``) from where the artifact's own step
  holds its activations (per block, when the backward starts): zo-hybrid:K keeps the last K blocks' share plus the
  backward's working set, side an inference forward plus one copy per tapped block but the last. Full backprop and
  LBP need their own graphs: they are measured when the artifact is one, else not estimated.
- the **state**: gradient buffers and optimizer moments of what the method trains by backprop (AdamW: 3 copies,
  SGD: 1), and for zo-hybrid one parameter-sized draw.

A method fits when baseline + step + state stays within 90 % of the budget (the memory guard's margin for what
the arrays leave out: the allocator's and BLAS's own buffers).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import psutil

from edge_lbp import methods
from edge_lbp.methods.base import StepMemory

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "K": 2**10, "M": 2**20, "G": 2**30}
_BLOCK = re.compile(r"/blocks\.(\d+)/")
MARGIN = 0.9


def parse_size(text: str) -> int:
    """``512MB`` (10^6), ``512MiB`` or ``512M`` (2^20), ``1.5GB``, ``800000000``; a one-line ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"memory {text!r} is not a size such as 512MB, 512MiB or 1.5GB")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class Row:
    method: str
    step: int
    state: int
    measured: bool

    def total(self, baseline: int) -> int:
        return baseline + self.step + self.state


def _blocks_of(names):
    """The block index of each node (``None`` outside the blocks); a fused node without a scope name takes the
    block of the named node before it."""
    blocks, current = [], None
    for name in names:
        match = _BLOCK.search(name)
        if match:
            current = int(match.group(1))
        elif name.startswith("/"):
            current = None
        blocks.append(current)
    return blocks


def _held_by_block(session, batch):
    """Bytes the outputs of each block's nodes hold when the backward starts, at ``batch`` (from probes at batch 1
    and 2, extrapolated per block)."""
    held = []
    for probe in (1, 2):
        nodes = session.held_at_backward_start(probe)
        by_block = {}
        for block, (_, size) in zip(_blocks_of([name for name, _ in nodes]), nodes):
            if size:
                by_block[block] = by_block.get(block, 0) + size
        held.append(by_block)
    return {b: held[0].get(b, 0) + max(0, held[1].get(b, 0) - held[0].get(b, 0)) * (batch - 1)
            for b in set(held[0]) | set(held[1])}


def plan(artifact_dir, batch: int, *, threads=None, zo_blocks: int = 2):
    """``(baseline bytes, [Row])`` for ``batch``; see the module's description."""
    import edge_lbp
    from edge_lbp.core.artifact import model_input

    session = edge_lbp.load(artifact_dir, "numba", threads=threads)
    manifest = session.artifact.manifest
    shape = model_input(manifest)["shape"][1:]
    rng = np.random.default_rng(0)
    session.eval_step(rng.random((1, *shape), np.float32))
    baseline = psutil.Process().memory_info().rss
    inference = session.eval_bytes(batch)
    copies = 1 + len(session.optimizer.moments)
    size = {n: a.nbytes for n, a in session.state.parameters().items()}
    trainable = session.artifact.trainable
    method = methods.of_manifest(manifest)
    own = session.step_bytes(batch)
    own_state = copies * sum(size[n] for n in trainable) + session.extra_state_bytes()
    rows = [Row("inference", inference, 0, True), Row(_own_name(method, manifest), own, own_state, True)]
    if method.name != methods.Method.name or set(trainable) != set(size):
        return baseline, rows  # the per-block split needs a step that backpropagates through every block
    held = _held_by_block(session, batch)
    memory = StepMemory(inference=inference, working=max(0, own - sum(held.values())), held=held,
                        block_output=session.node_output_bytes("/blocks.0/", batch), parameters=size,
                        state_copies=copies)
    for other in (methods.parse(m.PLANNED.format(blocks=zo_blocks)) for m in methods.METHODS if m.PLANNED):
        estimate = other.estimate(memory)
        if estimate is not None:
            rows.append(Row(other.spec, *estimate, False))
    return baseline, rows


def _own_name(method, manifest) -> str:
    """The artifact's method as plan names it: backprop of any trainable set is ``lbp`` or ``full``."""
    if method.name != methods.Method.name:
        return method.spec
    rewritten = any(r.get("status") == "rewritten" for r in manifest.get("lbp", {}).get("layers", []))
    return "lbp" if rewritten else "full"


def format_plan(artifact_dir, batch: int, budget: int, baseline: int, rows) -> str:
    mib = 2**20
    lines = [f"plan for {artifact_dir} at batch {batch}, budget {budget / mib:.0f} MiB (fits: within "
             f"{MARGIN:.0%}, {MARGIN * budget / mib:.0f} MiB)",
             f"baseline {baseline / mib:.0f} MiB: this process with the artifact loaded and its kernels warm",
             f"{'method':<14}{'step':>10}{'state':>10}{'peak':>10}   fits   how"]
    for row in rows:
        total = row.total(baseline)
        lines.append(f"{row.method:<14}{row.step / mib:>6.1f} MiB{row.state / mib:>6.1f} MiB{total / mib:>6.0f} MiB"
                     f"   {'yes' if total <= MARGIN * budget else 'no ':<4}   "
                     + ("measured by the engine's probe" if row.measured else "estimated from this artifact's step"))
    return "\n".join(lines)
