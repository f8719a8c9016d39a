"""Sequences of one model sharing batch caches: sequence i lives in row i.

Rows stay packed: a sequence that leaves is replaced by the last one (one row copy), so
a step runs on the view of rows `[0, n)` and never on empty rows. Row storage grows by
doubling (or to the number of rows asked for, up to `max_rows`) after reserving the
bytes in the worker's KV pool. An empty group keeps its storage (allocating it costs a
few ms per request) until the pool needs the room (`release_idle`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from server.engine.kv_pool import KVPool
from server.engine.protocol import Event
from server.engine.sequence import Sequence

FIRST_ROWS = 4


class RowGroup(ABC):
    def __init__(self, pool: KVPool, max_rows: int) -> None:
        self.pool = pool
        self.max_rows = max_rows
        self.seqs: list[Sequence] = []
        self.allocated = 0

    # What a kind of group provides.
    @abstractmethod
    def row_bytes(self) -> int:
        """Bytes of one row of every cache of the group."""

    @abstractmethod
    def resize(self, rows: int) -> None:
        """(Re)allocate storage for `rows` rows keeping rows `[0, len(seqs))`; 0 frees it."""

    @abstractmethod
    def copy_row(self, src: int, dst: int) -> None: ...

    @abstractmethod
    def start(self, seq: Sequence, events: list[Event]) -> None:
        """Set up a new sequence's row (reset it, or restore a session's cache)."""

    @abstractmethod
    def prefill(self, budget: int, events: list[Event]) -> int:
        """Feed pending inputs of prefilling rows, at most `budget` tokens; returns the
        tokens fed. Sequences whose prefill ends emit their first output."""

    @abstractmethod
    def decode(self, events: list[Event]) -> None:
        """One decode step (or speculative round) for every decoding row."""

    def finish(self, seq: Sequence) -> None:
        """Hook before a sequence leaves (sessions park their cache here)."""
        del seq

    # Shared bookkeeping.
    def __len__(self) -> int:
        return len(self.seqs)

    def decoding(self) -> list[Sequence]:
        return [s for s in self.seqs if s.decoding]

    def add(self, seq: Sequence, events: list[Event], coming: int = 1) -> bool:
        """Give `seq` a row; False when the KV budget has no room for one more. `coming`:
        how many sequences are about to join (this one included), to grow once."""
        n = len(self.seqs)
        if n == self.allocated and not self._grow(n + coming):
            return False
        seq.row = n
        self.seqs.append(seq)
        self.start(seq, events)
        return True

    def remove(self, seq: Sequence) -> None:
        self.finish(seq)
        row, last = seq.row, len(self.seqs) - 1
        if row != last:
            self.copy_row(last, row)
            self.seqs[row] = self.seqs[last]
            self.seqs[row].row = row
        self.seqs.pop()
        seq.row = -1

    def release_idle(self) -> int:
        """Free the storage of an empty group; returns the bytes given back."""
        if self.seqs or not self.allocated:
            return 0
        freed = self.allocated * self.row_bytes()
        self.resize(0)
        self.pool.release(freed)
        self.allocated = 0
        return freed

    def _grow(self, wanted: int) -> bool:
        n = self.allocated
        first = min(max(FIRST_ROWS, 2 * n, wanted), self.max_rows)
        for rows in (first, min(n + 1, self.max_rows)):
            if rows > n and self.pool.reserve((rows - n) * self.row_bytes()):
                self.resize(rows)
                self.allocated = rows
                return True
        return False
