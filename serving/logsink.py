"""The served-response log: one JSON object per line, rotated by size, read by the A/B analysis."""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any


class ResponseLog:
    def __init__(self, path: str | Path, max_bytes: int = 50 << 20, backups: int = 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._logger = logging.getLogger(f"recall.responses.{self.path}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self._logger.handlers:
            handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)

    def write(self, record: dict[str, Any]) -> None:
        self._logger.info(json.dumps(record, separators=(",", ":"), default=str))

    def flush(self) -> None:
        for h in self._logger.handlers:
            h.flush()


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every record in the log and its rotated files, oldest first."""
    p = Path(path)
    files = sorted(p.parent.glob(p.name + ".*"), key=lambda f: -int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0)
    out = []
    for f in [*files, p]:
        if f.exists():
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out
