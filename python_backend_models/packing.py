"""Which texts share a forward pass.  Pure (no torch); the encoder calls :func:`plan` once per dynamic batch.

A pack is a padded ``(rows, width)`` batch: its cost is ``rows * width`` padded tokens plus a fixed
``pass_cost`` (in tokens) for the pass itself (Python, kernel launches, the heads).  Padding every text of a
merged batch to the longest one wastes most of the work on mixed lengths; one pass per text pays the fixed
cost each time.  :func:`plan` finds the packs of least total cost under a token budget and a row bound.

Why a small dynamic programme is exact: sort the lengths longest first.  Any set of packs can be rearranged
into runs of that order without raising any pack's width (give the widest pack the longest texts, and so
on), so the best packs are contiguous runs, and the best split of the first ``j`` texts extends the best
split of some shorter prefix.  ``O(n * max_rows)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Pack:
    """``rows``: indices into the planned lengths, longest first; ``width``: the padded length."""

    rows: tuple[int, ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * self.width


def plan(lengths: Sequence[int], *, max_tokens: int, max_rows: int = 64, pass_cost: int = 64) -> list[Pack]:
    """Packs covering every index of ``lengths`` once, minimising ``sum(padded_tokens) + pass_cost * len(packs)``.

    Each pack holds at most ``max_rows`` texts and ``max_tokens`` padded tokens; a text longer than
    ``max_tokens`` gets a pack of its own.  Length 0 counts as 1 (a pass needs a column).  Packs come
    longest first; ties keep the input order, so the plan is deterministic.
    """
    if max_tokens < 1 or max_rows < 1 or pass_cost < 0:
        raise ValueError(f"plan needs max_tokens >= 1, max_rows >= 1, pass_cost >= 0; got {max_tokens}, {max_rows}, {pass_cost}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    width = [max(int(lengths[i]), 1) for i in order]
    n = len(order)
    best = [0] * (n + 1)  # best[j]: least cost of the first j texts (longest first)
    start = [0] * (n + 1)  # where the last pack of that best split starts
    for j in range(1, n + 1):
        best[j] = -1
        for i in range(j - 1, max(0, j - max_rows) - 1, -1):
            rows = j - i
            if rows > 1 and rows * width[i] > max_tokens:
                break  # a longer run is wider and has more rows: over budget too
            cost = best[i] + rows * width[i] + pass_cost
            if best[j] < 0 or cost < best[j]:
                best[j], start[j] = cost, i
    packs = []
    j = n
    while j > 0:
        i = start[j]
        packs.append(Pack(rows=tuple(order[i:j]), width=width[i]))
        j = i
    packs.reverse()
    return packs


def cost(packs: Sequence[Pack], pass_cost: int) -> int:
    """The quantity :func:`plan` minimises."""
    return sum(p.padded_tokens for p in packs) + pass_cost * len(packs)
