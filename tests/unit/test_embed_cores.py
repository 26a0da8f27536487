"""bench.embed_cores' window: the embed stage's cores are counted from sustained embedding,
not from the actor's start-up burst, and an idle gap inside the window counts against it."""

from __future__ import annotations

from bench.embed_cores import Sample, embed_window


def _samples(rates: list[float], step: float = 0.5) -> list[Sample]:
    out, cpu = [Sample(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)], 0.0
    for k, rate in enumerate(rates, start=1):
        cpu += rate * step
        out.append(Sample(k * step, cpu, 0.0, 0.0, 0.0, 0.0))
    return out


def test_the_start_up_burst_before_the_first_batch_is_left_out():
    # start-up burst, a wait for upstream, then two cores, a gap, two cores, done
    rates = [0.0, 1.2, 0.3, 0.0, 0.0, 1.9, 1.9, 1.9, 0.0, 1.9, 1.9, 0.0]
    i, j = embed_window(_samples(rates), busy=0.5, sustain=3)
    assert (i, j) == (5, 11)  # from just before the first sustained sample to the last busy one
    samples = _samples(rates)
    cores = (samples[j].embed - samples[i].embed) / (samples[j].at - samples[i].at)
    assert round(cores, 2) == round(1.9 * 5 / 6, 2)  # the gap counts as idle


def test_no_window_without_sustained_embedding():
    assert embed_window(_samples([0.0, 1.2, 0.0, 0.9, 0.0]), busy=0.5, sustain=3) is None
