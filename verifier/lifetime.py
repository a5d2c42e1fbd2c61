"""Worker processes end with the process that started them, also when it is killed by SIGKILL.

A process pool's workers block on their task queue, and a running one finishes its sample
first: after `kill -9` of the parent nothing tells them to stop, and they would run (and hold
cores and memory) forever. Each worker calls `die_with_parent(parent_pid)` when it starts:
on Linux the kernel sends it SIGKILL when its parent exits (PR_SET_PDEATHSIG); everywhere a
daemon thread also checks once a second that the run's process is still alive.

The run's process need not be the worker's parent: under the forkserver start method (Linux's
default from Python 3.14) the parent is the fork server, which exits when the run does. So the
worker watches both its actual parent and the run's pid. The kernel's signal follows the
*thread* that created the worker: create pools in a thread that outlives them (the callers
here create and close each pool in one thread).
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


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """End this process as soon as the run's process `parent_pid`, or this process's own parent
    (the run itself, or a fork server), is gone."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent == 1 or not _exists(parent_pid):  # the run died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent and _exists(parent_pid):
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
