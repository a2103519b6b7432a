"""A circuit breaker per upstream: stop sending work to an upstream that keeps failing.

    closed ──N consecutive failures──▶ open ──cool-down over──▶ half-open (one probe)
      ▲                                  ▲                           │
      └───────────── probe succeeded ────┼───────────────────────────┤
                                         └────── probe failed ───────┘

Only failures on the upstream's side count (see `UpstreamError.counts_against_upstream`).
An outcome that says nothing about the upstream's health (a rejected prompt, a cancelled
call) is neutral: it frees the probe slot and changes nothing else.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    #: Healthy: every call goes through.
    CLOSED = "closed"
    #: Out of rotation until the cool-down has passed.
    OPEN = "open"
    #: Cool-down over: one probe call decides between closed and open.
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a call go to this upstream now? A True in half-open is the one probe, and
        the caller must report its outcome (success, failure or neutral)."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() < self._opened_at + self._cooldown:
                return False
            self._state = BreakerState.HALF_OPEN
        if self._probing:
            return False
        self._probing = True
        return True

    def seconds_until_probe(self) -> float:
        """0 when a call would be let through now."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._cooldown - self._clock())
        if self._state is BreakerState.HALF_OPEN and self._probing:
            # The probe will settle it; ask again after a short while.
            return min(self._cooldown, 1.0)
        return 0.0

    def record_success(self) -> None:
        if self._state is BreakerState.OPEN:
            # A call admitted before the circuit opened; the probe decides, not stragglers.
            return
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        if self._state is BreakerState.OPEN:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def record_neutral(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._probing = False
