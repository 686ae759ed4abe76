"""What every benchmark does at the end: print its markdown table and write it, with the machine, as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def write_result(out: str | Path, table: str, **fields: Any) -> None:
    print("\n" + table)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, **fields, "markdown": table}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
