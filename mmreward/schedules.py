"""Learning-rate schedules shared by the project's training scripts."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, base: float, warmup: int) -> float:
    """Learning rate at 0-based ``step``: linear warm-up over ``warmup`` steps, then cosine decay
    from ``base`` to zero at ``total``."""
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
