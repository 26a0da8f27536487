"""A service's bound on the pages between their fetch and their write.

A crawl fetches faster than embedding and writing keep up with; unbounded, its pages pile
up in Ray Data's buffers and each waits behind the whole pile (measured: 60 s p50 from
fetch to write at 100 sites). So a crawl actor takes a credit before each fetch and the
service gives credits back as pages come out written: at most `queue.pages_in_flight` pages
are between the two, for all crawl actors of the service together (Scrapy bounds its
scraper the same way, SCRAPER_SLOT_MAX_ACTIVE_SIZE). The pool is an async Ray actor, one
per pipeline run: a pipeline that fails takes its credits with it.
"""

from __future__ import annotations

import asyncio

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
class _CreditPool:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._available = limit
        self._changed: asyncio.Condition | None = None  # made in the actor's event loop

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def take(self) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self._available > 0)
            self._available -= 1

    async def give_back(self, count: int) -> None:
        """Never above the limit: a row the crawl emitted without a fetch (a robots.txt
        refusal) comes back without having taken one."""
        changed = self._condition()
        async with changed:
            self._available = min(self._limit, self._available + count)
            changed.notify_all()


class PageCredits:
    """A handle that travels to the crawl actors: they `take`, the service gives back."""

    def __init__(self, limit: int) -> None:
        # On the service's own node: a pool placed on a worker node would fail the next pipeline
        # too when that node is lost (and a node Ray has not yet seen gone may still be chosen).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._pool = _CreditPool.options(scheduling_strategy=here).remote(limit)

    async def take(self) -> None:
        await self._pool.take.remote()

    def give_back(self, count: int) -> None:
        if count:
            self._pool.give_back.remote(count)

    def close(self) -> None:
        ray.kill(self._pool)
