from pipelines.metrics import Counter


def test_a_counter_tallies_by_tags_without_ray():
    counter = Counter("test_things_total", "things", ("status",))
    counter.inc(tags={"status": "ok"})
    counter.inc(2, tags={"status": "ok"})
    counter.inc(tags={"status": "failed"})
    assert counter.value(status="ok") == 3
    assert counter.value(status="failed") == 1
    assert counter.value(status="other") == 0
