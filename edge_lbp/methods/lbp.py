"""``--lbp``: the backward of whatever backprop a method does, in a low-rank 2-D Walsh-Hadamard basis (LBP-WHT).

Not a method of its own: every method's training graph gets the rewrite (``edge_lbp.export.lbp_rewrite``: each
trainable linear layer's backward becomes ``edge_lbp`` ops, which the numba engine runs as fused kernels). The
spelling: a default selection, then ``,PATTERN=SPEC`` overrides matched against weight names (later ones win).
"""
from edge_lbp.core import defaults

SYNTAX = "none | full | lp-tri:<o> | energy:<r>"
DEFAULT = defaults.SELECTION


def parse(spec: str, *, grid=None, extra_tokens=None, block=defaults.EXPORT_BLOCK):
    """The rewrite's configuration (``LbpConfig``); a one-line ValueError for a bad spelling."""
    from edge_lbp.export.lbp_rewrite import LbpConfig

    return LbpConfig.parse(spec, grid=grid, extra_tokens=extra_tokens, block=block)
