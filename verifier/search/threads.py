"""torch's CPU threads for a run, set in one place (option `threads`; batch workers use 1)."""

from __future__ import annotations

import torch


def set_threads(options) -> None:
    torch.set_num_threads(max(1, int(options.threads)))
