"""A circuit breaker: stop calling a service that keeps failing, and try it again later.

Without one, every embed batch during a provider outage waits out all of its retries
(minutes each) before failing, and every actor keeps hammering a service that is down.
With one, after `failure_threshold` consecutive failures the breaker *opens*: calls fail at
once, so the stage records the pages as failed with the reason and a later run picks them
up. After `cooldown_seconds` it lets ONE trial call through (*half-open*): success closes
it, failure opens it for another cool-down.

    closed ──(N consecutive failures)──► open ──(cool-down)──► half-open ──(success)──► closed
                                          ▲                        │
                                          └──────(failure)─────────┘

Plain logic with an injectable clock: no I/O, no Ray, thread-safe.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpenError(Exception):
    """The breaker refused a call; `retry_in` is the seconds left before a trial call is allowed."""

    def __init__(self, retry_in: float, last_failure: str) -> None:
        self.retry_in = retry_in
        self.last_failure = last_failure
        super().__init__(f"circuit open, next try in {retry_in:.1f}s; last failure: {last_failure}")


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        cooldown_seconds: float,
        *,
        name: str = "service",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_seconds > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._trial_started_at = 0.0
        self._last_failure = ""

    @property
    def state(self) -> BreakerState:
        """The state as a caller would meet it now (an open breaker past its cool-down is half-open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooldown_left() <= 0:
                return BreakerState.HALF_OPEN
            return self._state

    def _cooldown_left(self) -> float:
        return self._opened_at + self.cooldown_seconds - self._clock()

    def before_call(self) -> None:
        """Ask to make a call; raises CircuitOpenError when the breaker refuses it.

        In half-open only one caller gets through (the trial); the others are refused until
        its outcome is recorded, so a recovering service is not flooded. A trial whose outcome
        never comes (its caller died) stops blocking others after one more cool-down.
        """
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return
            if self._state is BreakerState.OPEN:
                left = self._cooldown_left()
                if left > 0:
                    raise CircuitOpenError(left, self._last_failure)
                self._state = BreakerState.HALF_OPEN
                self._trial_in_flight = False
                log.info("breaker.half_open name=%s", self.name)
            now = self._clock()
            if self._trial_in_flight and now - self._trial_started_at < self.cooldown_seconds:
                raise CircuitOpenError(
                    self._trial_started_at + self.cooldown_seconds - now, self._last_failure
                )
            self._trial_in_flight = True
            self._trial_started_at = now

    def record_success(self) -> None:
        with self._lock:
            if self._state is not BreakerState.CLOSED:
                log.info("breaker.closed name=%s", self.name)
            self._state = BreakerState.CLOSED
            self._consecutive_failures = 0
            self._trial_in_flight = False

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self._last_failure = reason
            self._consecutive_failures += 1
            trial_failed = self._state is BreakerState.HALF_OPEN
            if trial_failed or (
                self._state is BreakerState.CLOSED and self._consecutive_failures >= self.failure_threshold
            ):
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._trial_in_flight = False
                log.warning(
                    "breaker.open name=%s failures=%d cooldown_seconds=%.1f reason=%s",
                    self.name,
                    self._consecutive_failures,
                    self.cooldown_seconds,
                    reason,
                )
