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
    """Every record of the log at ``path`` — including the per-worker files ``<stem>.<pid><suffix>`` the
    service writes and their rotated copies — ordered by ``time`` (file order within equal times)."""
    p = Path(path)
    files = sorted(f for f in p.parent.glob(f"{p.stem}*{p.suffix}*") if f.is_file())

    def rotation(f: Path) -> int:  # x.jsonl.3 is older than x.jsonl.1, which is older than x.jsonl
        tail = f.name.rsplit(".", 1)[-1]
        return -int(tail) if tail.isdigit() else 0

    out: list[dict[str, Any]] = []
    for f in sorted(files, key=lambda f: (f.name.split(p.suffix)[0], rotation(f))):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return sorted(out, key=lambda r: r.get("time", 0))
