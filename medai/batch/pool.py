"""Where ``medai score`` runs its jobs: in this process, in local worker processes, or on a Dask cluster.

:class:`WorkPool` reads headers for discovery (:meth:`WorkPool.map_unordered`
over chunks of files, :func:`medai.batch.plan.discover_chunk`) and scores the
jobs of a :class:`medai.batch.plan.ScorePlan` (:meth:`WorkPool.score`), yielding
one row per job as each finishes (completion order):

* ``workers=1``: a plain loop in this process.
* ``workers=N``: N spawned worker processes (:class:`~concurrent.futures.ProcessPoolExecutor`).
  Each loads the model once (:func:`medai.batch.run.get_classifier`) with
  ``settings.threads`` onnxruntime threads and decodes on one thread, so N
  processes keep N cores busy: while one decodes a series (pydicom/numpy,
  partly outside the GIL) another preprocesses, runs the network or
  quantifies. At most ``2 N`` jobs are queued, so memory stays bounded.
  A worker that dies (e.g. killed for memory) breaks the pool: the jobs
  in flight are retried one at a time in a fresh pool, and the one that kills
  its worker again becomes a ``worker_lost`` error row.
* ``dask=True`` or ``scheduler``: the same jobs on a Dask distributed
  cluster, a local one (``LocalCluster`` of N single-threaded worker
  processes on 127.0.0.1, no dashboard) or an existing one given by address
  (``tcp://host:8786``). Each Dask worker process loads the model once (the
  same per-process cache). Every worker must see the model file and the
  input files under the same paths (shared storage).

Ctrl-C in the main process cancels queued jobs; workers ignore SIGINT and
finish the series they hold.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any

from medai.batch.job import ScoreSettings, score_job
from medai.batch.plan import ScoreJob
from medai.report.results import RowStatus, ScoreReason

__all__ = ["WorkPool"]

log = logging.getLogger(__name__)


def _lost(job: ScoreJob, settings: ScoreSettings, message: str) -> dict[str, Any]:
    return {
        **job.fields,
        "model_id": settings.model_id,
        "status": RowStatus.ERROR.value,
        "reason": ScoreReason.WORKER_LOST.value,
        "message": message,
    }


class WorkPool:
    """Where work runs: this process, local worker processes, or a Dask cluster. A context manager.

    Workers start on first use and only for two or more items (one series is
    scored in this process, without start-up cost). The same workers serve
    discovery (:meth:`map_unordered`) and scoring (:meth:`score`).

    Args:
        workers: processes (or local Dask workers); 1 runs everything in this process.
        dask: use a local Dask cluster of ``workers`` processes.
        scheduler: an existing Dask scheduler address (``tcp://host:8786``) or a ``distributed.Client``.

    Example:
        >>> with WorkPool(workers=1) as pool:
        ...     sorted(pool.map_unordered(abs, [-2, 1]))
        [1, 2]
    """

    def __init__(self, *, workers: int = 1, dask: bool = False, scheduler: str | Any | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        self.workers = workers
        self.use_dask = dask or scheduler is not None
        self._scheduler = scheduler
        self._pool: ProcessPoolExecutor | None = None
        self._client: Any = None
        self._owned: list[Any] = []

    @property
    def parallel(self) -> bool:
        """Whether work may leave this process."""
        return self.use_dask or self.workers > 1

    def __enter__(self) -> WorkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop local workers (queued work is cancelled) and close what this pool started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for thing in self._owned:
            thing.close()
        self._owned.clear()
        self._client = None

    # ------------------------------------------------------------ backends

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process holding onnxruntime threads
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_ignore_sigint)
        return self._pool

    def _dask(self) -> Any:
        if self._client is None:
            from distributed import Client, LocalCluster

            if self._scheduler is None:
                cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
                self._client = Client(cluster)
                self._owned += [self._client, cluster]
            elif isinstance(self._scheduler, Client):
                self._client = self._scheduler
            else:
                self._client = Client(self._scheduler)
                self._owned.append(self._client)
            info = self._client.scheduler_info()
            log.info("Dask scheduler %s with %d workers", info.get("address", "?"), len(info.get("workers", {})))
        return self._client

    def _dask_slots(self) -> int:
        return 2 * max(1, len(self._dask().scheduler_info().get("workers", {})))

    # ------------------------------------------------------------ generic map

    def map_unordered(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Yield ``function(item)`` for every item as each finishes (any order); errors propagate."""
        if not self.parallel or len(items) < 2:
            for item in items:
                yield function(item)
        elif self.use_dask:
            yield from (future.result() for future in self._dask_stream(function, items))
        else:
            pool = self._processes()
            queue = iter(items)
            in_flight = {pool.submit(function, item) for item in islice(queue, 4 * self.workers)}
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    following = next(queue, _END)
                    if following is not _END:
                        in_flight.add(pool.submit(function, following))

    def _dask_stream(self, function: Callable[..., Any], items: Sequence[Any], *args: Any) -> Iterator[Any]:
        """Submit with at most two tasks per worker queued; yield futures as they complete (item on ``.item``)."""
        from distributed import as_completed

        client = self._dask()
        queue = iter(items)
        completed = as_completed()
        pending: set[Any] = set()

        def submit(item: Any) -> None:
            future = client.submit(function, item, *args, pure=False)
            future.item = item
            pending.add(future)
            completed.add(future)

        try:
            for item in islice(queue, self._dask_slots()):
                submit(item)
            for future in completed:
                pending.discard(future)
                yield future
                following = next(queue, _END)
                if following is not _END:
                    submit(following)
        finally:
            if pending:  # interrupted: drop queued work from the cluster
                client.cancel(list(pending), force=True)

    # ------------------------------------------------------------ scoring

    def score(self, jobs: Sequence[ScoreJob], settings: ScoreSettings) -> Iterator[dict[str, Any]]:
        """Score ``jobs``, yielding one row per job as each finishes; never raises for a job.

        Example:
            >>> with WorkPool() as pool:
            ...     list(pool.score([], settings))  # doctest: +SKIP
            []
        """
        if not self.parallel or len(jobs) < 2:
            for job in jobs:
                yield score_job(job, settings)
        elif self.use_dask:
            for future in self._dask_stream(score_job, jobs, settings):
                try:
                    row = future.result()
                except Exception as exc:
                    log.error("Dask task for series %s failed: %r", future.item.key, exc)
                    message = f"the Dask worker scoring this series failed: {type(exc).__name__}: {exc}"
                    row = _lost(future.item, settings, message)
                yield row
        else:
            yield from self._score_processes(jobs, settings)

    def _score_processes(self, jobs: Sequence[ScoreJob], settings: ScoreSettings) -> Iterator[dict[str, Any]]:
        pending: deque[ScoreJob] = deque(jobs)
        suspects: deque[ScoreJob] = deque()  # in flight when a worker died: retried one at a time
        in_flight: dict[Future[dict[str, Any]], ScoreJob] = {}
        solo = False
        while pending or suspects or in_flight:
            pool = self._processes()
            if suspects and not in_flight:
                job = suspects.popleft()
                in_flight[pool.submit(score_job, job, settings)] = job
                solo = True
            elif not suspects:
                solo = False
                while pending and len(in_flight) < 2 * self.workers:
                    job = pending.popleft()
                    in_flight[pool.submit(score_job, job, settings)] = job
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                job = in_flight.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    broken = True
                    if solo:
                        log.error("series %s killed its worker process twice; giving up on it", job.key)
                        yield _lost(job, settings, "the worker process scoring this series died (out of memory?)")
                    else:
                        suspects.append(job)
                    continue
                yield row
            if broken:
                log.warning("a worker process died; retrying %d series one at a time", len(suspects) + len(in_flight))
                suspects.extend(in_flight.values())
                in_flight.clear()
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None


_END = object()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
