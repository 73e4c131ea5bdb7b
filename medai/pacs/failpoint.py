"""Crash points for the failure drills: the process SIGKILLs itself at a named point when asked to.

``MEDAI_PACS_FAILPOINT=NAME medai pacs serve ...`` kills the service the first time it reaches ``NAME``,
exactly as the kernel's OOM killer or a power cut would (no cleanup, no flush). The drills use it to hit the
narrow windows an outside ``kill -9`` rarely lands in, then restart the service without the variable and
check that nothing acknowledged was lost or delivered twice. Unset, a failpoint costs one dictionary look-up.

Points: ``scoring`` (a series claimed and scored, its results not yet recorded) and ``sent-unrecorded``
(every result object acknowledged by a destination, the delivery not yet recorded).
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["FAILPOINTS", "FAILPOINT_ENV", "failpoint"]

log = logging.getLogger(__name__)

FAILPOINT_ENV = "MEDAI_PACS_FAILPOINT"
FAILPOINTS = ("scoring", "sent-unrecorded")


def failpoint(name: str) -> None:
    """SIGKILL this process when ``$MEDAI_PACS_FAILPOINT`` is ``name``."""
    if name not in FAILPOINTS:
        raise ValueError(f"failpoint must be one of {FAILPOINTS}, not {name!r}")
    if os.environ.get(FAILPOINT_ENV) == name:
        log.critical("failpoint %s: killing this process (SIGKILL) for a failure drill", name)
        os.kill(os.getpid(), signal.SIGKILL)
