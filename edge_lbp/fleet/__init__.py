"""A fleet of boards adapting one model together: federated averaging with Flower (the ``fleet`` extra).

Nothing here is a federation of its own. Flower's deployment engine (SuperLink, SuperNodes, ``flwr run``) moves
the messages; ``edge_lbp.fleet.client`` is the ClientApp (the Trainer on each board's data), ``edge_lbp.fleet.server``
the ServerApp (Flower's FedAvg over the trainable parameters, the global model saved after every round),
``edge_lbp.fleet.local`` a whole deployment on this machine's loopback interface. This module holds what needs no
Flower: where the bundled Flower App lives, and how a board's data is split when several boards share one dataset.

Flower is imported only by the client, server and local modules, so ``import edge_lbp.fleet`` works without it.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from edge_lbp.data import Dataset

# The Flower App (pyproject.toml with [tool.flwr.app]) that `flwr run` bundles and sends to the SuperLink. It holds
# configuration only: its components name modules of the installed edge_lbp, which every board must have.
APP_DIR = Path(__file__).parent / "app"
PARTITION_SCHEMES = ("iid", "class")


def require_flower() -> None:
    """One clear line when the optional dependency is missing, instead of an ImportError deep in Flower."""
    try:
        with warnings.catch_warnings():  # Flower's own dependencies' deprecation notes are not the user's business
            warnings.simplefilter("ignore", DeprecationWarning)
            import flwr  # noqa: F401
    except ImportError:
        raise ValueError("the fleet commands need Flower: pip install 'edge-lbp[fleet]' (flwr 1.42)") from None


def partition(dataset: Dataset, index: int, count: int, *, by: str = "iid", seed: int = 0) -> Dataset:
    """The ``index``-th of ``count`` disjoint parts of ``dataset`` (the rest of the samples are other boards').

    ``by="iid"``: a permutation drawn from ``seed``, dealt out like cards (part sizes differ by at most one, every
    part has about the same class mix). ``by="class"``: part ``i`` gets every sample whose label ``l`` has
    ``l % count == i`` (each board sees only its own classes: the hard, non-IID case). The class list is kept
    whole, so every part labels classes as the model does.
    """
    if by not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {by!r}; choose one of {', '.join(PARTITION_SCHEMES)}")
    if not 0 <= index < count:
        raise ValueError(f"partition {index} of {count} does not exist (0 <= partition-id < num-partitions)")
    if by == "iid":
        chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[index::count])
    else:
        chosen = np.flatnonzero(dataset.labels % count == index)
    if len(chosen) == 0:
        raise ValueError(f"{dataset.source}: partition {index} of {count} ({by}) holds no samples")
    return dataclasses.replace(dataset, images=dataset.images[chosen], labels=dataset.labels[chosen],
                               source=f"{dataset.source} (part {index + 1} of {count}, {by})")
