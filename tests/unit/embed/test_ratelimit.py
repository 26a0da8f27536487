"""The shared rate limit's arithmetic, on a hand-held clock; the Ray actor is exercised in
tests/integration/embed (two actors sharing one bucket)."""

import random

import pytest

from pipelines.embed import ratelimit
from pipelines.embed.ratelimit import SharedBucketActor, TokenBucket, bucket_name, shared_rate_limiter


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_each_request_waits_one_interval_more():
    clock = Clock()
    bucket = TokenBucket(600, 0, clock=clock)  # 10 requests/s, a burst of 10
    assert [bucket.reserve(1, 0) for _ in range(10)] == [0.0] * 10
    waits = [bucket.reserve(1, 0) for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])


def test_time_refills_the_bucket_up_to_its_burst_only():
    clock = Clock()
    bucket = TokenBucket(600, 0, clock=clock)
    for _ in range(10):
        bucket.reserve(1, 0)
    clock.now += 0.5
    assert [bucket.reserve(1, 0) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(1, 0) == pytest.approx(0.1)
    clock.now += 3600  # an idle hour refills one burst, not 36 000 requests
    assert sum(bucket.reserve(1, 0) == 0.0 for _ in range(20)) == 10


def test_a_request_larger_than_the_burst_waits_for_its_tokens_and_delays_the_next():
    clock = Clock()
    bucket = TokenBucket(0, 60_000, clock=clock)  # 1000 tokens/s, burst 1000
    assert bucket.reserve(1, 5000) == pytest.approx(4.0)
    assert bucket.reserve(1, 500) == pytest.approx(4.5)


def test_the_wait_is_the_longer_of_the_two_limits():
    clock = Clock()
    bucket = TokenBucket(60, 60_000, clock=clock)  # 1 request/s (burst 1), 1000 tokens/s
    assert bucket.reserve(1, 10) == 0.0
    assert bucket.reserve(1, 10) == pytest.approx(1.0)  # requests bind
    assert bucket.reserve(1, 4000) == pytest.approx(3.02)  # tokens bind


def test_zero_means_no_limit():
    bucket = TokenBucket(0, 0, clock=Clock())
    assert all(bucket.reserve(1, 10**9) == 0.0 for _ in range(1000))
    assert isinstance(shared_rate_limiter("http://x/v1", "m", 0, 0).reserve(1, 5), float)


def test_callers_who_wait_as_told_never_exceed_burst_plus_rate():
    """The bucket's guarantee, for many callers arriving at random times."""
    clock = Clock()
    start = clock.now
    per_second, burst = 5.0, 5.0
    bucket = TokenBucket(per_second * 60, 0, clock=clock)
    rng = random.Random(7)
    sent_at = []
    for _ in range(200):
        clock.now += rng.expovariate(20.0)  # callers ask 4x faster than the limit
        sent_at.append(clock.now + bucket.reserve(1, 0))
    sent_at.sort()
    for count, moment in enumerate(sent_at, start=1):
        assert count <= burst + per_second * (moment - start) + 1e-9


def test_the_shared_actor_follows_changed_limits():
    actor = SharedBucketActor()  # the Ray actor's class, called directly
    assert [actor.reserve(1, 0, 60, 0) for _ in range(2)] == pytest.approx([0.0, 1.0], abs=0.05)
    assert actor.reserve(1, 0, 6000, 0) == 0.0  # new limits: a new bucket


def test_without_ray_one_process_shares_one_bucket_per_service_and_model(monkeypatch):
    monkeypatch.setattr(ratelimit.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ratelimit, "_local_buckets", {})
    first = shared_rate_limiter("http://tei:8080/v1", "bge-m3", 60, 0)
    second = shared_rate_limiter("http://tei:8080/v1/", "bge-m3", 60, 0)
    other_model = shared_rate_limiter("http://tei:8080/v1", "e5", 60, 0)
    assert first.reserve(1, 0) == 0.0
    assert second.reserve(1, 0) > 0.5  # the same bucket, already spent
    assert other_model.reserve(1, 0) == 0.0


def test_bucket_names_are_stable_and_reveal_no_url():
    name = bucket_name("https://user:secret@api.example/v1", "text-embedding-3-small")
    assert name == bucket_name("https://user:secret@api.example/v1/", "text-embedding-3-small")
    assert name != bucket_name("https://user:secret@api.example/v1", "text-embedding-3-large")
    assert "secret" not in name and "example" not in name
