"""A pipeline run's life, as the actors it started see it.

Ray Data lets go of a run's actors without stopping them when the run ends early (the driver
was interrupted, the pipeline failed): it drops its handles, and an actor lives until its
task ends. A crawl task ends only when its sites are crawled, so without a word it would go
on fetching for minutes (in a notebook whose cell was interrupted, holding its CPU share so
that the next run waits for it), or, in the service, crawl sites the queue has already
handed to the next pipeline. So a run is a small actor the driver kills when the run ends,
and the crawl actors ask it, every crawl.run_check_seconds, whether it still lives.
"""

from __future__ import annotations

import logging

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class _Alive:
    def alive(self) -> bool:
        return True


class PipelineRun:
    """Alive until `end()`. Picklable: it travels to the crawl actors (pipelines.crawl.contracts.RunLife)."""

    def __init__(self, name: str) -> None:
        self.name = name
        # On the driver's node: a run whose driver's node is gone has ended too.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._actor = _Alive.options(scheduling_strategy=here).remote()
        self._asked: ray.ObjectRef | None = None
        self._ended = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_asked": None}

    def end(self) -> None:
        ray.kill(self._actor)

    async def ended(self) -> bool:
        """Whether the run has ended, as far as is known now: the question is asked once and its
        answer looked at without waiting for it (`ray.wait` with no timeout), so a caller on an
        event loop is never held up; an answer still due counts as alive."""
        if self._ended:
            return True
        try:
            if self._asked is None:
                self._asked = self._actor.alive.remote()
            answered, _ = ray.wait([self._asked], timeout=0)
            if not answered:
                return False
            self._asked = None
            ray.get(answered[0])
        except ray.exceptions.ActorUnavailableError:  # unreachable for now, not dead: ask again
            self._asked = None
            return False
        # Killed once created, or before it could be (Ray then says unschedulable); or the
        # caller's own task was cancelled (Ray Data cancels a run's tasks as it shuts it down,
        # and Ray raises that in the task's next call into Ray: this one).
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.ActorUnschedulableError,
            ray.exceptions.TaskCancelledError,
        ) as exc:
            self._ended = True
            log.warning(
                "pipeline.run_ended run=%s (%s): its actors stop what they do", self.name, type(exc).__name__
            )
        return self._ended
