"""Native solver libraries that print before their output options can be set.

highspy 1.16 prints a two-line banner ("Running HiGHS ...") on the process's stdout from
`highspy.Highs()` itself, before `output_flag` can be switched off; PuLP's HiGHS wrapper sets
its options only after that. The text comes from C++, so redirecting `sys.stdout` misses it:
the file descriptors 1 and 2 are pointed at /dev/null for the duration of the call instead.
This keeps stdout for what the user asked for (a JSON object, a VNN-COMP result).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.RLock()


@contextmanager
def muted_native_output() -> Iterator[None]:
    """Silence everything written to file descriptors 1 and 2 (C, C++ or Python) inside the
    block. Python's own buffers are flushed first so that nothing printed before the block is
    lost. Nested and concurrent uses in one process are serialised by a lock."""
    with _lock:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        saved: list[tuple[int, int]] = []
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            yield
            return
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(devnull, fd)
                except OSError:
                    pass
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (AttributeError, ValueError, OSError):
                    pass
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            os.close(devnull)
