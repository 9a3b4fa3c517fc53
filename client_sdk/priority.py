"""Background work at a lower OS priority than the calls it must not slow down.

Linux schedules threads one by one, so one thread's niceness can be raised on its own (``setpriority`` on its
thread id); elsewhere these do nothing. A thread's niceness is only ever raised, and to at most the process's
own plus ``nice``: lowering it back would need privileges, which is why a one-off job gets its own thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def lower_this_thread(nice: int) -> None:
    """Make the calling thread ``nice`` steps lower than the process's main thread (no-op where unsupported)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice)
        if target > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as err:
        log.debug("could not lower this thread's priority: %s", err)


def at_lower_priority(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` on a helper thread ``nice`` steps lower than the process; the caller waits for it, and gets its
    result or its exception. With ``nice`` 0, or off Linux, ``fn`` runs on the calling thread."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return fn()
    out: dict[str, Any] = {}

    def run() -> None:
        lower_this_thread(nice)
        try:
            out["value"] = fn()
        except BaseException as err:  # handed to the caller's thread below
            out["error"] = err

    thread = threading.Thread(target=run, name="mlfs-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
