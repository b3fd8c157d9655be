"""Candidates scored by K Ray actors, each holding its own copy of the models and tasks; the optimiser stays in the
driver and hands out a batch of K candidates at a time (as mergekit-evolve does). A local Ray is started on the
loopback interface unless ``--ray-address`` names a running cluster."""

from __future__ import annotations

import os

from ..errors import TaskvecError
from .worker import Worker


class RayPool:
    def __init__(self, tasks_file: str, folder: str | None, options):
        try:
            import ray
        except ImportError:
            raise TaskvecError("--workers and --ray-address run candidates on Ray, which is not installed; "
                               "pip install 'taskvec[ray]' (or run without them: one worker in this process)") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            if options.ray_address:
                try:
                    ray.init(address=options.ray_address, log_to_driver=False, configure_logging=False)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise TaskvecError(f"--ray-address {options.ray_address}: cannot connect ({e})") from None
            else:
                ray.init(num_cpus=max(options.workers, 1), _node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            self._started = True
        workers = options.workers
        if workers <= 1:  # --ray-address alone: one actor per CPU the cluster offers
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = max(1, (os.cpu_count() or 1) // workers) if not options.ray_address else None
        actor = ray.remote(num_cpus=1)(Worker)
        self.actors = [actor.remote(tasks_file, folder, options.device, options.in_memory, threads)
                       for _ in range(workers)]
        self.size = workers

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, TaskvecError):
                raise TaskvecError(str(cause)) from None
            raise

    def map(self, candidates: list[dict]) -> list[dict]:
        refs = [self.actors[i % self.size].score.remote(c) for i, c in enumerate(candidates)]
        return self._get(refs)

    def held_out(self, candidate: dict) -> dict:
        return self._get(self.actors[0].score.remote(candidate, True))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self._started:
            self.ray.shutdown()
