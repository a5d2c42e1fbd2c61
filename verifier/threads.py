"""torch's CPU threads, set in one place: a run uses its option `threads` while it runs and
gives the caller's setting back after (an API user's own torch work keeps its threads); a
worker process of a search or a batch uses one, since its parent already spreads work over the
cores."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """torch uses `threads` (at least 1) inside the block, the caller's count again after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_threads() -> None:
    """One torch thread for the rest of this worker process's life."""
    torch.set_num_threads(1)
