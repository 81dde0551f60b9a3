"""Learning-rate schedules per optimizer update: linear warm-up, then constant or cosine to 0."""
import math

SCHEDULES = ("constant", "cosine")


def schedule_lr(update: int, *, peak: float, schedule: str = "constant", warmup_steps: int = 0,
                total_steps=None) -> float:
    """Learning rate of optimizer update number ``update`` (0-based).

    Warm-up: ``peak * (update + 1) / warmup_steps`` for the first ``warmup_steps`` updates (the first update
    already moves). Then ``constant``: ``peak``; ``cosine``: ``peak * (1 + cos(pi * t)) / 2`` with
    ``t = (update - warmup_steps) / (total_steps - warmup_steps)``, held at 0 once ``t`` reaches 1.
    """
    if update < warmup_steps:
        return peak * (update + 1) / warmup_steps
    if schedule == "constant":
        return peak
    if not total_steps:
        raise ValueError("the cosine schedule needs total_steps (fit() derives it from the epochs)")
    t = min(1.0, (update - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))
