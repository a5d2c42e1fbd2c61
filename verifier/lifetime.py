"""Worker processes end with the process that started them, also when it is killed by SIGKILL.

A process pool's workers block on their task queue, and a running one finishes its sample
first: after `kill -9` of the parent nothing tells them to stop, and they would run (and hold
cores and memory) forever. Each worker calls `die_with_parent(parent_pid)` when it starts:
on Linux the kernel sends it SIGKILL when its parent exits (PR_SET_PDEATHSIG); everywhere a
daemon thread also checks once a second that the parent is still the one it started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """End this process as soon as `parent_pid` is no longer its parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
