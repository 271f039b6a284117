"""How many candidates fit a latency budget: a cost model learnt from the model's own calls.

Scoring time is close to linear in the number of pairs: ``fixed + per_pair * n``. The model's
:class:`LatencyModel` starts from a short calibration (two timed calls when first needed) and
follows the machine's load through an exponential moving average of every later call, so the
chosen ``k`` shrinks when the CPU is busy and grows back when it is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LatencyModel:
    """Predicts the milliseconds to score ``n`` pairs; thread-safe."""

    def __init__(self, fixed_ms: float = 0.5, per_pair_ms: float = 0.5, alpha: float = 0.2):
        self.fixed_ms = fixed_ms
        self.per_pair_ms = per_pair_ms
        self.alpha = alpha
        self.calibrated = False
        self._lock = threading.Lock()

    def calibrate(self, run: Callable[[int], None], small: int = 4, large: int = 64) -> None:
        """Fit the line from timed calls of ``run(n)`` (scores n pairs), best of three each."""

        def best(n: int) -> float:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                run(n)
                times.append((time.perf_counter() - t0) * 1e3)
            return min(times)

        run(large)  # warm-up
        t_small, t_large = best(small), best(large)
        per_pair = max((t_large - t_small) / (large - small), 1e-3)
        with self._lock:
            self.per_pair_ms = per_pair
            self.fixed_ms = max(t_small - small * per_pair, 0.0)
            self.calibrated = True

    def observe(self, pairs: int, ms: float) -> None:
        """Update the per-pair cost from a measured call."""
        if pairs <= 0:
            return
        with self._lock:
            sample = max(ms - self.fixed_ms, 0.0) / pairs
            self.per_pair_ms += self.alpha * (sample - self.per_pair_ms)

    def predict_ms(self, pairs: int) -> float:
        return self.fixed_ms + self.per_pair_ms * pairs if pairs > 0 else 0.0

    def k_for(self, budget_ms: float, k_max: int) -> int:
        """The most pairs (≤ ``k_max``) predicted to score within ``budget_ms``."""
        if budget_ms <= self.fixed_ms or k_max <= 0:
            return 0
        return int(min(k_max, (budget_ms - self.fixed_ms) // max(self.per_pair_ms, 1e-6)))

    def split(self, budget_ms: float, k_max: int) -> tuple[int, None]:
        """``(k_for(...), None)``: a single model has no second stage to shrink (a cascade's
        cost model answers with the count its second stage rescores)."""
        return self.k_for(budget_ms, k_max), None
