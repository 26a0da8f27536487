"""How long to wait before asking again: one rule for every client that retries.

The crawler (sites that are busy), the OpenAI-compatible embedding backend (429 and 5xx),
the writer (a database restart) and the crawl queue (recording a crawl's end through a
restart) all wait the same way: full jitter, a random wait up to a cap that doubles with
each attempt, so that many workers hit by the same outage do not come back in step
(AWS Architecture Blog, "Exponential Backoff And Jitter"). A server's Retry-After is a
floor on the wait, and `max_wait_seconds` a ceiling on it, Retry-After included: a server
asking for an hour must not stall a worker for an hour.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """The waits between attempts; each config section that retries builds one from its
    `*retry_backoff_seconds` and `*retry_max_wait_seconds` settings."""

    base_seconds: float  # the first retry waits up to this, doubling each time
    max_wait_seconds: float  # no wait is longer, a server's Retry-After included

    def wait(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        backoff = random.uniform(0, self.base_seconds * 2**retry)
        return min(max(backoff, retry_after or 0.0), self.max_wait_seconds)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms` (OpenAI's, finer), else
    Retry-After as delay-seconds or an HTTP date (RFC 9110 §10.2.3); None when absent or
    unreadable. `headers` must look names up case-insensitively (aiohttp's and requests' do)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
