"""One rate limit (requests/min and tokens/min) for every embed actor calling the same service.

A provider's limit belongs to the account, not to a worker: ten embed actors each keeping
"their share" would either waste the limit or, as actors come and go, exceed it and earn
429s. So the count lives in ONE place per (base URL, model): a named Ray actor that every
embed actor of the cluster finds by name. Outside Ray (unit tests, a plain script) an
in-process bucket stands in, shared by every embedder of the process.

The bucket never blocks: a caller reserves (1 request, n tokens) and gets back how long to
wait before sending; it sleeps that long itself. Reservations may run the bucket into debt,
which later callers wait out in turn, so a request larger than the burst still goes through
at the configured rate and callers are served in the order they asked.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import ray

log = logging.getLogger(__name__)

# Burst allowance: a full bucket holds this many seconds' worth of the rate. Providers state
# per-minute limits but enforce them over shorter windows too, so a minute's worth at once
# would earn 429s; one second's worth keeps the start of a job from waiting needlessly.
BURST_SECONDS = 1.0
# Where the shared buckets live: a fixed namespace, because every Ray job gets a fresh
# anonymous one and named actors are only visible inside their namespace.
RAY_NAMESPACE = "kb-pipeline-ratelimit"
_RAY_CALL_TIMEOUT_SECONDS = 30.0


class _Rate:
    """One bucket: `per_minute` units refilled continuously, holding at most a burst."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, self.per_second * BURST_SECONDS)
        self.level = self.capacity
        self.updated = now

    def reserve(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_second)
        self.updated = now
        self.level -= amount
        return max(0.0, -self.level / self.per_second)


class TokenBucket:
    """Requests-per-minute and tokens-per-minute buckets; a limit of 0 means none.

    Guarantee: whatever callers reserve by time T fits in one burst plus the rate times the
    time elapsed, provided each caller waits the time `reserve` returns.
    """

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute < 0 or tokens_per_minute < 0:
            raise ValueError("rate limits must be >= 0")
        self._clock = clock
        self._lock = threading.Lock()
        self.limits = (requests_per_minute, tokens_per_minute)
        now = clock()
        self._requests = _Rate(requests_per_minute, now) if requests_per_minute else None
        self._tokens = _Rate(tokens_per_minute, now) if tokens_per_minute else None

    def reserve(self, requests: int = 1, tokens: int = 0) -> float:
        """Take (requests, tokens) from the buckets; returns the seconds to wait before sending."""
        with self._lock:
            now = self._clock()
            waits = [0.0]
            if self._requests is not None:
                waits.append(self._requests.reserve(requests, now))
            if self._tokens is not None:
                waits.append(self._tokens.reserve(tokens, now))
            return max(waits)


class RateLimiter(Protocol):
    def reserve(self, requests: int, tokens: int) -> float:
        """Seconds the caller must wait before sending a request of `tokens` tokens."""
        ...


_local_buckets: dict[str, TokenBucket] = {}
_local_lock = threading.Lock()


def _local_bucket(name: str, requests_per_minute: float, tokens_per_minute: float) -> TokenBucket:
    """The process's own bucket for `name`, rebuilt when the limits change."""
    with _local_lock:
        bucket = _local_buckets.get(name)
        if bucket is None or bucket.limits != (requests_per_minute, tokens_per_minute):
            bucket = _local_buckets[name] = TokenBucket(requests_per_minute, tokens_per_minute)
        return bucket


class SharedBucketActor:
    """The Ray actor holding one shared bucket. Callers send their limits with every
    reservation, so a long-lived (detached) bucket follows a job's changed configuration."""

    def __init__(self) -> None:
        self._bucket: TokenBucket | None = None

    def reserve(
        self, requests: int, tokens: int, requests_per_minute: float, tokens_per_minute: float
    ) -> float:
        limits = (requests_per_minute, tokens_per_minute)
        if self._bucket is None or self._bucket.limits != limits:
            self._bucket = TokenBucket(requests_per_minute, tokens_per_minute)
        return self._bucket.reserve(requests, tokens)


class RayRateLimiter:
    """Reservations on the cluster-wide bucket `name`, created by whichever caller comes first.

    Detached, so it outlives the embed actor that happened to create it (a job-scoped actor
    dies with its creator) and keeps counting across jobs that share the account's limit.
    If the bucket cannot be reached, this process falls back to its own bucket for that call
    (logged): a slower limit is better than a stalled job.
    """

    def __init__(self, name: str, requests_per_minute: float, tokens_per_minute: float) -> None:
        self.name = name
        self._limits = (requests_per_minute, tokens_per_minute)
        self._handle: ray.actor.ActorHandle | None = None

    def _actor(self) -> ray.actor.ActorHandle:
        if self._handle is None:
            self._handle = (
                ray.remote(SharedBucketActor)
                .options(
                    name=self.name,
                    namespace=RAY_NAMESPACE,
                    lifetime="detached",
                    get_if_exists=True,
                    num_cpus=0,
                    max_restarts=-1,
                )
                .remote()
            )
        return self._handle

    def reserve(self, requests: int, tokens: int) -> float:
        try:
            return ray.get(
                self._actor().reserve.remote(requests, tokens, *self._limits),
                timeout=_RAY_CALL_TIMEOUT_SECONDS,
            )
        except (ray.exceptions.RayError, ValueError) as exc:
            log.warning("ratelimit.shared_unavailable name=%s reason=%s", self.name, type(exc).__name__)
            self._handle = None  # found or created again on the next call
            return _local_bucket(self.name, *self._limits).reserve(requests, tokens)


class _LocalRateLimiter:
    def __init__(self, name: str, requests_per_minute: float, tokens_per_minute: float) -> None:
        self._bucket = _local_bucket(name, requests_per_minute, tokens_per_minute)

    def reserve(self, requests: int, tokens: int) -> float:
        return self._bucket.reserve(requests, tokens)


class _NoLimit:
    def reserve(self, requests: int, tokens: int) -> float:
        return 0.0


def bucket_name(base_url: str, model: str) -> str:
    """Same service and model, same bucket; the name shows neither (URLs may carry secrets)."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}|{model}".encode()).hexdigest()[:16]
    return f"embed-ratelimit-{digest}"


def shared_rate_limiter(
    base_url: str, model: str, requests_per_minute: float, tokens_per_minute: float
) -> RateLimiter:
    """The limiter every embedder calling (base_url, model) shares: across the Ray cluster
    when Ray is running, across the process otherwise."""
    if not requests_per_minute and not tokens_per_minute:
        return _NoLimit()
    name = bucket_name(base_url, model)
    if ray.is_initialized():
        return RayRateLimiter(name, requests_per_minute, tokens_per_minute)
    return _LocalRateLimiter(name, requests_per_minute, tokens_per_minute)
