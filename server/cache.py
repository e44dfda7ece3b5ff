"""One small in-process LRU, shared by the template compiler and the prefill documents."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class Lru(Generic[V]):
    """A thread-safe LRU of at most ``size`` values (gunicorn's gthread workers share it).

    ``put`` skips a value whose ``input_size`` (what it was made from) exceeds ``max_input``:
    keeping documents built from huge templates is not worth the memory.
    """

    def __init__(self, size: int, max_input: int | None = None) -> None:
        self.size = size
        self.max_input = max_input
        self._items: OrderedDict[Any, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> V | None:
        """The value kept for ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: V, input_size: int = 0) -> None:
        """Keep ``value`` for ``key``, dropping the least recently used beyond ``size``."""
        if self.max_input is not None and input_size > self.max_input:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        """How many values are kept."""
        return len(self._items)
