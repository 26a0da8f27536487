"""The circuit breaker's states, driven by a hand-held clock (no sleeping)."""

import pytest

from pipelines.embed.breaker import BreakerState, CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, failures: int = 3, cooldown: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker(failures, cooldown, name="test", clock=clock)


def _fail(breaker: CircuitBreaker, times: int, reason: str = "HTTP 503") -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure(reason)


def test_stays_closed_below_the_threshold_and_a_success_resets_the_count():
    breaker = _breaker(Clock())
    _fail(breaker, 2)
    breaker.before_call()
    breaker.record_success()
    _fail(breaker, 2)  # 2 + 2 failures, but not consecutive
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()


def test_opens_after_consecutive_failures_and_refuses_calls_with_the_reason():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3, "HTTP 500 Internal Server Error")
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    with pytest.raises(CircuitOpenError) as refused:
        breaker.before_call()
    assert refused.value.retry_in == pytest.approx(20)
    assert refused.value.last_failure == "HTTP 500 Internal Server Error"


def test_half_open_after_the_cooldown_lets_one_trial_through_and_success_closes():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 30
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # a second caller while the trial is out
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()
    breaker.before_call()


def test_a_failed_trial_opens_again_for_a_whole_cooldown():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 31
    breaker.before_call()
    breaker.record_failure("timed out")  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    clock.now += 29
    with pytest.raises(CircuitOpenError, match="timed out"):
        breaker.before_call()
    clock.now += 1
    breaker.before_call()  # the next trial


def test_a_trial_whose_outcome_never_comes_stops_blocking_after_another_cooldown():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 30
    breaker.before_call()  # this caller dies without recording anything
    clock.now += 29
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    clock.now += 1
    breaker.before_call()


@pytest.mark.parametrize("failures, cooldown", [(0, 1.0), (1, 0.0)])
def test_refuses_settings_that_make_no_breaker(failures, cooldown):
    with pytest.raises(ValueError):
        CircuitBreaker(failures, cooldown)
