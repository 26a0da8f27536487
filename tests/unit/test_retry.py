"""One backoff rule and one Retry-After reading for every client that retries."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from pipelines.retry import Backoff, retry_after_seconds


def test_retry_after_accepts_seconds_and_dates():
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"Retry-After": "1.5"}) == 1.5  # fractions: what the crawler used to drop
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds({"Retry-After": soon}) <= 30
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_retry_after_in_the_past_is_no_wait():
    past = format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)
    assert retry_after_seconds({"Retry-After": past}) == 0.0
    assert retry_after_seconds({"Retry-After": "-3"}) == 0.0


@pytest.mark.parametrize("retry", range(4))
def test_backoff_is_jittered_under_a_doubling_cap(retry):
    backoff = Backoff(base_seconds=0.5, max_wait_seconds=100.0)
    waits = [backoff.wait(retry) for _ in range(200)]
    assert all(0 <= w <= 0.5 * 2**retry for w in waits)
    assert max(waits) > 0.5 * 2**retry * 0.8, "the ceiling doubles with each retry"
    assert len(set(waits)) > 100, "full jitter: the waits of many workers must not coincide"


def test_no_wait_is_longer_than_the_cap():
    backoff = Backoff(base_seconds=0.5, max_wait_seconds=4.0)
    assert max(backoff.wait(10) for _ in range(200)) == 4.0


def test_retry_after_is_a_floor_and_the_cap_a_ceiling():
    backoff = Backoff(base_seconds=0.01, max_wait_seconds=3.0)
    assert backoff.wait(0, retry_after=2.0) == 2.0
    assert backoff.wait(0, retry_after=3600.0) == 3.0
