"""Start-up cost of a process that touches Feast: every Airflow task, Kubeflow step and serving worker
pays it. Fresh interpreters import what a step imports (torch, then the feature repository's
definitions, which import Feast), with Feast's typeguard instrumentation skipped (the default, see
``feature_repo/__init__.py``) and kept (``RECALL_FEAST_TYPECHECKS=1``), alternating over --rounds so
a drift of the machine's speed favours neither; the table gives medians.

    python benchmarks/imports.py
    python benchmarks/imports.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402

PROBE = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import feature_repo.definitions
t2 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "feast": t2 - t1}))
"""
VARIANTS = {"typeguard skipped (default)": "0", "typeguard kept (RECALL_FEAST_TYPECHECKS=1)": "1"}


def probe(checks: str) -> dict[str, float]:
    env = {**os.environ, "RECALL_FEAST_TYPECHECKS": checks, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "imports.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, checks in VARIANTS.items():
            runs[name].append(probe(checks))
            print(f"round {r + 1}/{args.rounds} {name}: feast {runs[name][-1]['feast']:.2f} s", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("torch", "feast")} for name, rs in runs.items()}
    base = med["typeguard kept (RECALL_FEAST_TYPECHECKS=1)"]["feast"]
    rows = ["| variant | import torch (s) | then import Feast + definitions (s) | Feast ÷ kept |",
            "|---|---:|---:|---:|"]
    rows += [f"| {name} | {m['torch']:.2f} | {m['feast']:.2f} | {m['feast'] / base:.2f} |" for name, m in med.items()]
    write_result(args.out, "\n".join(rows), rounds=args.rounds, medians=med, runs=runs)


if __name__ == "__main__":
    main()
