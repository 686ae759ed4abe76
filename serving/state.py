"""Everything a request needs, swapped atomically on reload: the routing, the loaded (verified)
versions, the versions that failed to load and why, and the result cache.

A request takes one reference to the current :class:`ServingState` and uses only it, so a reload that
replaces the state never changes what an in-flight request sees.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import routing as rt
from components.registry import ModelVersion, VersionError

from .retriever import Retriever

logger = logging.getLogger("recall.serving")


class ResultCache:
    """A bounded, time-limited LRU of results for frequent users; thread-safe; counts hits."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 60.0):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is None or now - entry[0] > self.ttl_s:
                if entry is not None:
                    del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: Any, value: Any) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class ServingState:
    routing: rt.Routing
    retrievers: dict[str, Retriever]
    failures: dict[str, str]
    source: str
    mtime: float
    cache: ResultCache = field(default_factory=ResultCache)
    loaded_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.routing.default in self.retrievers

    def route(self, user_id: str) -> tuple[rt.Assignment, Retriever, str | None]:
        """The user's assignment and the retriever that serves it. A variant whose version failed to
        load is never served: its users get the default version, flagged ``variant_unavailable``."""
        a = rt.assign(self.routing, user_id)
        r = self.retrievers.get(a.model)
        if r is not None:
            return a, r, None
        return a, self.retrievers[self.routing.default], "variant_unavailable"

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "routing": rt.to_dict(self.routing),
            "routing_file": self.source,
            "loaded": {tag: r.describe() for tag, r in self.retrievers.items()},
            "failed": self.failures,
            "loaded_at": self.loaded_at,
            "cache": {"entries": len(self.cache), "hit_rate": round(self.cache.hit_rate, 4)},
        }


def build_state(
    routing_path: str | Path,
    resolve: Callable[[str], ModelVersion],
    previous: ServingState | None = None,
    threads: int = 1,
    cache_entries: int = 10_000,
    cache_ttl_s: float = 60.0,
) -> ServingState:
    """Loads the routing file and every version it names. Versions already loaded by ``previous`` are
    reused (a version directory never changes once written); each new one is verified by the registry
    and, if broken, recorded in ``failures`` and never routed to. Raises :class:`routing.RoutingError`
    for a malformed file (the caller keeps the previous state)."""
    path = Path(routing_path)
    mtime = path.stat().st_mtime if path.exists() else 0.0
    routing = rt.load(path)
    retrievers: dict[str, Retriever] = {}
    failures: dict[str, str] = {}
    for tag in routing.models():
        if previous is not None and tag in previous.retrievers:
            retrievers[tag] = previous.retrievers[tag]
            continue
        try:
            retrievers[tag] = Retriever(resolve(tag), threads)
            logger.info("loaded %s", tag)
        except (VersionError, OSError, RuntimeError, ValueError) as e:
            failures[tag] = str(e)
            logger.error("refusing %s: %s", tag, e)
    if routing.default not in retrievers:
        logger.error("the default version %s is not available: not ready", routing.default)
    return ServingState(routing, retrievers, failures, str(path), mtime, ResultCache(cache_entries, cache_ttl_s))
