"""Python logging bridged to Kamailio's log (KSR.err/warn/info/dbg).

Kamailio's log_prefix already carries the method, CSeq and Call-ID of the message being
routed, so a line logged from a route is tied to its call without formatting it here.
"""

from __future__ import annotations

import logging
from typing import Any

_LEVELS = ((logging.ERROR, "err"), (logging.WARNING, "warn"), (logging.INFO, "info"))


class KamailioLogHandler(logging.Handler):
    def __init__(self, ksr: Any) -> None:
        super().__init__()
        self._ksr = ksr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            for level, name in _LEVELS:
                if record.levelno >= level:
                    getattr(self._ksr, name)(line)
                    return
            self._ksr.dbg(line)
        except Exception:  # a log line must never break routing
            self.handleError(record)


def lean_records() -> None:
    """Log records without what our format never prints (logging's documented optimisations):
    no caller lookup (a walk up the stack for every line), no thread or process fields. For
    Kamailio's embedded interpreter, where only kemi-ha logs (kemi.entry.mod_init)."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def install(ksr: Any, level: int = logging.INFO) -> None:
    """Route the `kemi` logger to Kamailio; idempotent, as a KEMI reload re-runs it."""
    logger = logging.getLogger("kemi")
    for handler in list(logger.handlers):
        if isinstance(handler, KamailioLogHandler):
            logger.removeHandler(handler)
    handler = KamailioLogHandler(ksr)
    handler.setFormatter(logging.Formatter("kemi-ha: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
