"""Op kernels for the numba engine. Importing this package registers every kernel."""
from edge_lbp.runtime.kernels import (  # noqa: F401
    activation,
    attention,
    elementwise,
    lbp,
    linear,
    loss,
    norm,
    optimizer,
    pool,
    resize,
    shape,
    stochastic,
)
