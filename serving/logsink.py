"""The served-response log: one JSON object per line, rotated by size; ``components.ab.read_response_log``
reads it back (all workers' files, rotated ones included)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class ResponseLog:
    """Appends one JSON line per record, line-buffered so a reader sees it at once. Past ``max_bytes``
    the file becomes ``<name>.1`` (older ones shift up to ``backups``). Thread-safe, and cheaper than the
    logging module on the hot path."""

    def __init__(self, path: str | Path, max_bytes: int = 50 << 20, backups: int = 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups = max_bytes, backups
        self._lock = threading.Lock()
        self._file = open(self.path, "a", buffering=1)
        self._size = self.path.stat().st_size

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._size += len(line)
            if self._size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "a", buffering=1)
        self._size = 0

    def flush(self) -> None:
        with self._lock:
            self._file.flush()
