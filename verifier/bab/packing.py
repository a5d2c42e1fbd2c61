"""How a queued domain is stored: only the entries of the split nodes that can differ between
domains, its parameters in half precision.

A search's domains differ only in the entries that are uncertain at the root for some spec
(for ReLUs, the unstable ones): every other entry is fixed to one side by the root bounds in
every domain, is never split, and its slope and split multiplier do not enter the bound. On a
CIFAR ResNet that is one entry in seven, so storing only those lets about seven times as many
domains wait in the same memory. Slopes and multipliers are only the children's warm start (any
values in their range give valid bounds, and every bound that counts is recomputed in float64),
so they are kept in float16, which halves them again; signs are int8. Memory measured in
benchmarks/RESULTS.md, "Why the defaults are what they are".
"""

from __future__ import annotations

import torch

#: Precision of the slopes and multipliers a queued domain keeps for its children's warm start.
STORED = torch.float16


class Packing:
    """Maps a batch's per-split-node tensors to the compact rows a queued domain keeps, and back.

    `free` holds, per split node, a (n_k,) bool mask of the entries that can differ between
    domains; entries outside it come back as 0 (sign: free; slope and multiplier: unused)."""

    def __init__(self, free: list[torch.Tensor]) -> None:
        flat = torch.cat(free) if free else torch.zeros(0, dtype=torch.bool)
        self.index = torch.nonzero(flat).flatten()
        self.total = int(flat.numel())

    @property
    def kept(self) -> int:
        """Entries a domain keeps."""
        return int(self.index.numel())

    def signs(self, signs: list[torch.Tensor]) -> torch.Tensor:
        """(B, kept) int8 from the per-node (B, n_k) signs."""
        return torch.cat(signs, dim=-1)[:, self.index]

    def params(self, alphas: list[torch.Tensor], betas: list[torch.Tensor]) -> torch.Tensor:
        """(B, 2, m, kept) STORED: the slopes, then the multipliers, from per-node (B, m, n_k)."""
        both = torch.stack([torch.cat(alphas, dim=-1), torch.cat(betas, dim=-1)], 1)
        return both[..., self.index].to(STORED)

    def full_signs(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, N) int8 signs over every split node's entries from (B, kept)."""
        full = packed.new_zeros(packed.shape[:-1] + (self.total,))
        full[..., self.index] = packed
        return full

    def full_params(self, packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 2, m, N) slopes and multipliers in `dtype` from (B, 2, m, kept)."""
        full = torch.zeros(packed.shape[:-1] + (self.total,), dtype=dtype, device=packed.device)
        full[..., self.index] = packed.to(dtype)
        return full
