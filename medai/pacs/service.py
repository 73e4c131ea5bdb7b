"""``medai pacs serve`` as an object: the spool, the queue, the listener, the worker and the sender, wired.

Start order matters for durability: the spool's leftovers are cleared, the queue recovers what a crash
interrupted (see :meth:`~medai.pacs.queue.JobQueue.recover`), the audit log catches up, and only then does
the listener accept associations. Stop order is the reverse: no new instance, then the threads finish their
current step. Everything in between is safe to kill at any instant.

Example:
    >>> service = PacsService(build_config({...}))  # doctest: +SKIP
    >>> host, port = service.start()  # doctest: +SKIP
    >>> service.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from medai.pacs.audit import AuditLog
from medai.pacs.config import PacsConfig
from medai.pacs.listener import Listener
from medai.pacs.queue import JobQueue
from medai.pacs.sender import Sender
from medai.pacs.spool import Spool
from medai.pacs.worker import Worker

if TYPE_CHECKING:
    from medai.inference.classifier import Classifier

__all__ = ["PacsService"]

log = logging.getLogger(__name__)


class PacsService:
    """The PACS hook.

    Args:
        config: the settings.
        classifier: a loaded model to reuse; loaded from ``config.model`` (or the default) when omitted.
    """

    def __init__(self, config: PacsConfig, *, classifier: Classifier | None = None) -> None:
        if classifier is None:
            from medai.inference.classifier import Classifier

            classifier = Classifier.load(config.model, threads=config.threads)
        self.config = config
        self.classifier = classifier
        self.spool = Spool(config.spool)
        self.queue = JobQueue(self.spool.database)
        self.audit = AuditLog(config.audit_log or self.spool.audit_log)
        self.finished = threading.Condition()
        self.sender = Sender(config, self.queue, self.audit, on_finished=self._finished)
        self.worker = Worker(
            config,
            self.spool,
            self.queue,
            self.audit,
            classifier,
            on_scored=self.sender.wake,
            held_series=lambda: self.listener.open_series(),
        )
        self.listener = Listener(config, self.spool, self.queue, on_stored=self.worker.wake)
        self.address: tuple[str, int] | None = None

    def _finished(self, job_id: int, state: str) -> None:
        with self.finished:
            self.finished.notify_all()

    def start(self) -> tuple[str, int]:
        """Recover, then listen; returns the bound (host, port)."""
        leftovers = self.spool.clear_tmp()
        recovered = self.queue.recover()
        self.audit.sync(self.queue)
        if leftovers or any(recovered.values()):
            log.warning(
                "recovered after an interruption: %d series to score again, %d deliveries to retry, "
                "%d unacknowledged partial files removed",
                recovered["rescore"],
                recovered["resend"],
                leftovers,
            )
        self.worker.start()
        self.sender.start()
        self.address = self.listener.start()
        return self.address

    def stop(self) -> None:
        """Stop listening, let the worker and sender finish their current step, close the queue."""
        self.listener.stop()
        self.worker.stop()
        self.sender.stop()
        self.queue.close()
