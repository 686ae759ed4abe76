"""Everything a request needs, swapped atomically on reload: the routing, the loaded (verified)
versions, the versions that failed to load and why, and the result cache.

A request takes one reference to the current :class:`ServingState` and uses only it, so a reload that
replaces the state never changes what an in-flight request sees.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import routing as rt
from components.registry import ModelVersion, VersionError, canonical

from .retriever import Retriever

logger = logging.getLogger("recall.serving")


class ResultCache:
    """A bounded, time-limited LRU of results for frequent users; thread-safe; counts hits. Keys are
    tuples whose second element is the user: :meth:`drop_users` forgets a user's results (their
    features changed), and a result computed from features read before that (``put`` with the
    :meth:`version` taken before the read) is not stored."""

    MAX_TRACKED = 100_000  # users whose drops are counted; beyond it one counter for everyone

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 60.0):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._by_user: dict[str, set[Any]] = {}
        self._drops: dict[str, int] = {}  # user → times their results were dropped
        self._epoch = 0  # times everything was dropped
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _forget(self, key: Any) -> None:
        del self._data[key]
        keys = self._by_user.get(key[1])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[key[1]]

    def get(self, key: Any) -> Any | None:
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is None or now - entry[0] > self.ttl_s:
                if entry is not None:
                    self._forget(key)
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[1]

    def version(self, user: str) -> tuple[int, int]:
        """Take before reading a user's features; pass to :meth:`put`."""
        with self._lock:
            return self._epoch, self._drops.get(user, 0)

    def put(self, key: Any, value: Any, version: tuple[int, int] | None = None) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            if version is not None and version != (self._epoch, self._drops.get(key[1], 0)):
                return  # the user's features changed since this result's were read
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            self._by_user.setdefault(key[1], set()).add(key)
            while len(self._data) > self.max_entries:
                self._forget(next(iter(self._data)))

    def drop_users(self, users: list[str] | None) -> None:
        """Forgets these users' results; ``None``: everyone's."""
        with self._lock:
            if users is None or len(self._drops) + len(users) > self.MAX_TRACKED:
                self._data.clear()
                self._by_user.clear()
                self._drops.clear()
                self._epoch += 1
                return
            for u in users:
                self._drops[u] = self._drops.get(u, 0) + 1
                for key in self._by_user.pop(u, ()):
                    self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PushJournal:
    """The users whose online features were pushed, one per line, appended by whichever worker pushed.
    Before answering from its cache each worker reads what was appended since it last looked (one
    ``stat`` when nothing was) and drops those users' cached results, so a pushed click changes the next
    answer in every worker. A rotated (replaced) journal makes the reader drop everything."""

    MAX_BYTES = 4 << 20

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        st = self._stat()
        self._ino, self._offset = (st.st_ino, st.st_size) if st else (None, 0)

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except FileNotFoundError:
            return None

    def record(self, users: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        st = self._stat()
        if st is not None and st.st_size > self.MAX_BYTES:
            try:
                os.replace(self.path, self.path.with_name(self.path.name + ".old"))
            except FileNotFoundError:  # another worker rotated it first
                pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(f"{u}\n" for u in users).encode())  # one append: never interleaved
        finally:
            os.close(fd)

    def changed(self) -> list[str] | None:
        """The users pushed since the last call; ``None`` when the journal was replaced (drop all)."""
        st = self._stat()
        if st is None or (st.st_ino == self._ino and st.st_size == self._offset):
            return []
        with self._lock:
            # Replaced (another inode) or truncated: drop everything. A first journal is read whole.
            rotated = self._ino is not None and (st.st_ino != self._ino or st.st_size < self._offset)
            if rotated or st.st_ino != self._ino:
                self._ino, self._offset = st.st_ino, 0
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(max(0, st.st_size - self._offset))
            end = chunk.rfind(b"\n") + 1  # whole lines only; a line being written is read next time
            self._offset += end
            return None if rotated else chunk[:end].decode().split()


@dataclass
class ServingState:
    routing: rt.Routing
    retrievers: dict[str, Retriever]
    failures: dict[str, str]
    source: str
    mtime: float
    cache: ResultCache = field(default_factory=ResultCache)
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def empty(cls, source: str, mtime: float, reason: str) -> ServingState:
        """Nothing to serve (the routing file could not be loaded at start-up): up, not ready, saying why."""
        return cls(rt.Routing(default=""), {}, {"routing": reason}, source, mtime)

    @property
    def ready(self) -> bool:
        return self.routing.default in self.retrievers

    @property
    def generation(self) -> str:
        return rt.generation(self.routing) if self.routing.default else "none"

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
            "routing_generation": self.generation,
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
    tag_of: Callable[[str], str | None] | None = None,
) -> ServingState:
    """Loads the routing file and every version it names, each spelling (``sasrec:v2``, the latest form
    ``recall-sasrec``, ``recall-sasrec:v2``) resolved once, here, to the version's canonical tag: the
    state's routing and retrievers are keyed by that tag only, so a request can never look up a name
    that was not loaded. Versions already loaded by ``previous`` are reused (a version directory never
    changes once written); each new one is verified by the registry and, if anything at all goes wrong
    loading it, recorded in ``failures`` with the reason and never routed to. ``tag_of`` names the
    version a reference without a version (the latest form) points to without verifying it, so an
    unchanged latest version is reused too. Raises :class:`routing.RoutingError` for a malformed file
    (the caller keeps the previous state)."""
    path = Path(routing_path)
    mtime = path.stat().st_mtime if path.exists() else 0.0
    routing = rt.load(path)
    retrievers: dict[str, Retriever] = {}
    failures: dict[str, str] = {}
    names: dict[str, str] = {}
    reuse = previous.retrievers if previous is not None else {}
    for ref in routing.models():
        try:
            tag = canonical(ref) or (tag_of(ref) if tag_of is not None else None)
            if tag is not None and tag in reuse:  # already verified and loaded: no second verification
                names[ref] = tag
                retrievers[tag] = reuse[tag]
                continue
            mv = resolve(ref)
            if tag is not None and mv.tag != tag:
                raise VersionError(f"{ref} resolved to a version whose model.json names {mv.tag}")
            if mv.tag not in retrievers:
                retrievers[mv.tag] = reuse.get(mv.tag) or Retriever(mv, threads)
                logger.info("loaded %s%s", mv.tag, "" if ref == mv.tag else f" (routing says {ref})")
            names[ref] = mv.tag  # (only once it serves: a failure stays under the routing's own spelling)
        except Exception as e:  # noqa: BLE001 - whatever breaks a version, the others and the service carry on
            failures[ref] = str(e) if isinstance(e, VersionError) else f"{type(e).__name__}: {e}"
            logger.error("refusing %s: %s", ref, failures[ref])
    routing = rt.rename(routing, names)
    if routing.default not in retrievers:
        logger.error("the default version %s is not available: not ready", routing.default)
    return ServingState(routing, retrievers, failures, str(path), mtime, ResultCache(cache_entries, cache_ttl_s))
