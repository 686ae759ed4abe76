"""Accuracy and training speed of every registered model beside popularity on MovieLens-100K.

Protocol: time-ordered leave-last-out (file order on equal timestamps), early stopping on the
validation events, full-corpus ranking of the test events over all 1,682 movies, with and without
masking of already-seen items. Prints a markdown table and writes JSON.

    python benchmarks/accuracy.py                 # every model, configs/<model>.yaml
    python benchmarks/accuracy.py --models sasrec --quick
    python benchmarks/accuracy.py --models mind --seed 1 --out /tmp/mind_seed1.json   # another seed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import train  # noqa: E402
from components.config import load_config  # noqa: E402
from models.data import train_item_counts  # noqa: E402
from models.evaluation import evaluate_model, evaluate_popularity  # noqa: E402
from models.registry import MODELS, load_checkpoint  # noqa: E402

COLS = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "hit@50", "recall@100"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="registry names (default: all)")
    ap.add_argument("--quick", action="store_true", help="at most 3 epochs per model (a smoke run, not a result)")
    ap.add_argument("--seed", type=int, help="train.seed for every model (default: each config's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows: dict[str, dict] = {}
    prepared = None
    for name in args.models:
        overrides = ["data.source=ml100k", "train.progress=false", f"out_dir=runs/bench/{name}"]
        if args.quick:
            overrides.append("train.epochs=3")
        if args.seed is not None:
            overrides.append(f"train.seed={args.seed}")
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
        if prepared is None or prepared[1].schema.max_len != cfg.train.max_len:
            prepared = train.prepare(cfg)
        _, enc, split = prepared
        t0 = time.perf_counter()
        out = train.run(cfg, prepared)
        wall = time.perf_counter() - t0
        model, _ = load_checkpoint(cfg.out_dir)
        unmasked = evaluate_model(model, enc.data, split, "test", cfg.train.max_len, False, cfg.ks)
        rows[name] = {
            "masked": out.test_metrics,
            "validation": out.val_metrics,
            "unmasked": unmasked,
            "best_epoch": out.best_epoch,
            "train_seconds": round(out.train_seconds, 1),
            "wall_seconds": round(wall, 1),
            "examples_per_s": round(out.examples_per_s),
            "config": cfg.to_dict(),
        }
        print(f"{name}: ndcg@10 {out.test_metrics['ndcg@10']:.4f}, {out.examples_per_s:,.0f} examples/s", flush=True)
    _, enc, split = prepared
    counts = train_item_counts(enc.data, split)
    rows["popularity"] = {
        "masked": evaluate_popularity(counts, enc.data, split, "test", True),
        "unmasked": evaluate_popularity(counts, enc.data, split, "test", False),
    }

    pop = rows["popularity"]
    lines = [
        "| model | seen | " + " | ".join(COLS) + " | × popularity (NDCG@10, R@20) | best epoch | train s | ex/s |",
        "|---|---|" + "---:|" * (len(COLS) + 4),
    ]
    for name, r in rows.items():
        for which in ("masked", "unmasked"):
            m = r[which]
            extra = (
                f"{r['best_epoch']} | {r['train_seconds']} | {r['examples_per_s']:,}"
                if "best_epoch" in r
                else "– | – | –"
            )
            ratio = " / ".join(f"{m[c] / pop[which][c]:.2f}×" for c in ("ndcg@10", "recall@20"))
            lines.append(f"| {name} | {which} | " + " | ".join(f"{m[c]:.4f}" for c in COLS) + f" | {ratio} | {extra} |")
    table = "\n".join(lines)
    print(table)
    result = {
        "protocol": "ML-100K, leave-last-out by time, full corpus (1,682 items), test events; "
        "early stopping on validation",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "quick": args.quick,
        "seed": args.seed,
        "models": rows,
        "table": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
