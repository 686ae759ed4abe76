"""Feature pipeline wall time: ingest → validate → apply → materialize (→ a published snapshot),
on MovieLens-100K and on a synthetic set of ~1M interactions (SQLite online store, DuckDB offline store).
Each dataset runs in a fresh directory. Target: ML-100K end to end under 60 s on this machine.

    python benchmarks/features.py
    python benchmarks/features.py --datasets ml100k
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from components.config import load_config  # noqa: E402
from components.features import STEPS, run_pipeline  # noqa: E402

DATASETS = {
    "ml100k": ["data.source=ml100k", "validation.rating_min=1", "validation.rating_max=5"],
    "synthetic-1M": [
        "data.source=synthetic",
        "data.synthetic.n_users=20000",
        "data.synthetic.n_items=20000",
        "data.synthetic.n_interactions=1000000",
        "data.synthetic.n_clusters=20",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/features.json"))
    args = ap.parse_args()

    rows = {}
    for name in args.datasets:
        with tempfile.TemporaryDirectory(prefix=f"features-{name}-") as d:
            cfg = load_config(
                None, [*DATASETS[name], f"features.dir={d}", f"train.max_len={args.max_len}", "model=sasrec"]
            )
            t0 = time.perf_counter()
            out = run_pipeline(cfg, STEPS)
            total = time.perf_counter() - t0
        rows[name] = {"seconds": out["seconds"], "total_s": total, "rows": out["rows"]}
        steps = "  ".join(f"{k} {v:.1f}s" for k, v in out["seconds"].items())
        print(f"{name}: {steps}  total {total:.1f}s  rows {out['rows']}", flush=True)

    head = "| dataset | interactions | snapshots | " + " | ".join(f"{s} (s)" for s in STEPS) + " | total (s) |"
    lines = [head, "|---|---:|---:|" + "---:|" * (len(STEPS) + 1)]
    for name, r in rows.items():
        cells = " | ".join(f"{r['seconds'].get(s, float('nan')):.1f}" for s in STEPS)
        sizes = f"{r['rows']['interactions']:,} | {r['rows']['user_behaviour']:,}"
        lines.append(f"| {name} | {sizes} | {cells} | {r['total_s']:.1f} |")
    write_result(args.out, "\n".join(lines), max_len=args.max_len, datasets=rows)


if __name__ == "__main__":
    main()
