"""BufferManager: which shared-memory buffers are empty and which are mapped (held downstream).

The invariant ``empty + mapped == total`` is checked on every status report.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BufferManager"]


class BufferManager:
    """Empty-buffer queue (precharged with every buffer) and the set of mapped buffers."""

    def __init__(self, num_buffers: int) -> None:
        self.total = num_buffers
        self.empty: deque[int] = deque(range(num_buffers))
        self.mapped: set[int] = set()

    def take(self) -> int | None:
        """An empty buffer id, now mapped; None when every buffer is mapped."""
        if not self.empty:
            return None
        bid = self.empty.popleft()
        self.mapped.add(bid)
        return bid

    def release(self, bid: int) -> bool:
        """Return a mapped buffer to the empty queue; False if it was not mapped (a bogus release)."""
        if bid not in self.mapped:
            return False
        self.mapped.discard(bid)
        self.empty.append(bid)
        return True

    @property
    def consistent(self) -> bool:
        return len(self.empty) + len(self.mapped) == self.total and not self.mapped.intersection(self.empty)

    def status(self) -> dict[str, int | bool]:
        return {"total": self.total, "empty": len(self.empty), "mapped": len(self.mapped),
                "consistent": self.consistent}
