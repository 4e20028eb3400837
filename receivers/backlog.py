"""What a receiver has read and not yet generated, and which of it goes into the next generate call.

A receiver that read eight long text asks and decoded them all before looking at its socket again kept a small
latent ask that arrived meanwhile waiting for all eight (seconds, for an ask that takes tens of milliseconds
alone). The receiver instead keeps what it read here, reads its socket again between the steps of a generate call
(`lm.Decoding`: a span of the prompt, or one token) and takes the next call's requests by size: the sub-batch whose
longest request is the shortest, among everything queued. A call that is much shorter than the one running
(`take(at_most=...)`) runs to completion between two of its steps (`Receiver.generate_next`), so a short ask waits
for one step of longer work, not for the whole of it.

Shortest first alone could starve a long request behind a steady stream of short ones, so a request that later
requests overtook `max_passed` times goes into the very next call (and a running call is paused at most
`max_passed` times).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_PASSED = 8  # generate calls a queued request may be passed over for shorter work before it goes first


@dataclass
class _Queued(Generic[T]):
    item: T
    group: Hashable  # requests decoded in one call share it (the receiver's: latent or text, and the token cap)
    size: int  # padded positions it adds to a call (`receiver.positions`)
    seq: int  # arrival order: ties go to the oldest
    passed: int = 0


class Backlog(Generic[T]):
    """Requests waiting for a generate call; `take` picks the next call's, each call at most `budget` padded
    positions (count x its longest request; a request over `budget` alone is a call of its own) and `max_count`
    requests."""

    def __init__(self, budget: int, max_count: int = 8, max_passed: int = MAX_PASSED) -> None:
        self.budget, self.max_count, self.max_passed = budget, max(1, max_count), max_passed
        self._queued: list[_Queued[T]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, item: T, group: Hashable, size: int) -> None:
        self._queued.append(_Queued(item, group, size, self._seq))
        self._seq += 1

    def take(self, at_most: int | None = None) -> tuple[Hashable, list[T]]:
        """(group, items) of the next generate call, removed from the backlog: the shortest sub-batch of any group,
        unless a request was passed over `max_passed` times (then the oldest such one's sub-batch); (None, []) if
        empty. With `at_most`, only requests of at most that many positions are taken (a call that runs while a
        longer one is paused), and none while a longer request is starved (it goes next)."""
        pool = [q for q in self._queued if at_most is None or q.size <= at_most]
        starved = [q for q in self._queued if q.passed >= self.max_passed]
        oldest = min(starved, key=lambda q: q.seq) if starved else None
        if not pool or (oldest is not None and oldest not in pool):
            return None, []
        candidates: list[list[_Queued[T]]] = []
        groups: dict[Hashable, list[_Queued[T]]] = {}
        for q in pool:
            groups.setdefault(q.group, []).append(q)
        for members in groups.values():
            for batch in sub_batches([q.size for q in members], self.budget):
                for k in range(0, len(batch), self.max_count):
                    candidates.append([members[j] for j in batch[k : k + self.max_count]])
        if oldest is not None:
            chosen = next(c for c in candidates if oldest in c)
        else:
            chosen = min(candidates, key=lambda c: (max(q.size for q in c), min(q.seq for q in c)))
        taken, newest = {id(q) for q in chosen}, max(q.seq for q in chosen)
        self._queued = [q for q in self._queued if id(q) not in taken]
        for q in self._queued:
            q.passed += q.seq < newest  # overtaken by later work (waiting behind older work is no starvation)
        return chosen[0].group, [q.item for q in sorted(chosen, key=lambda q: q.seq)]

    def drain(self) -> list[T]:
        """Everything queued, oldest first, removed (e.g. to refuse it on the way out)."""
        out = [q.item for q in sorted(self._queued, key=lambda q: q.seq)]
        self._queued = []
        return out


def sub_batches(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `sizes` in batches, shortest first, each padded (count x its longest) to at most `budget`
    positions; a request over `budget` alone is a batch of its own."""
    batches: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda j: sizes[j]):  # ascending: sizes[i] is the batch's longest
        if batches and (len(batches[-1]) + 1) * sizes[i] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
