"""Does the request context (hour, weekday, weekend, month) help? DSSM and YoutubeDNN on MovieLens-100K,
each trained with and without `model_params.context=true` from its recipe (configs/<model>.yaml), over
several seeds; test metrics (full corpus, seen items masked) and the paired difference per seed.

    python benchmarks/context.py
    python benchmarks/context.py --models dssm --seeds 0 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402

METRICS = ("ndcg@10", "recall@20", "recall@50")


def main() -> None:
    from components.config import load_config
    from components.train import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["dssm", "youtube_dnn"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--work", default=str(ROOT / "runs/bench/context"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/context.json"))
    args = ap.parse_args()
    runs = []
    for model in args.models:
        for seed in args.seeds:
            for context in (False, True):
                cfg = load_config(ROOT / "configs" / f"{model}.yaml", [
                    f"model_params.context={str(context).lower()}", f"train.seed={seed}", "train.progress=false",
                    f"out_dir={Path(args.work) / f'{model}-{seed}-{int(context)}'}",
                ])  # fmt: skip
                t0 = time.perf_counter()
                out = run(cfg)
                runs.append({"model": model, "seed": seed, "context": context, "seconds": time.perf_counter() - t0,
                             "best_epoch": out.best_epoch, **{m: out.test_metrics[m] for m in METRICS}})  # fmt: skip
                print(f"  {model} seed {seed} context {context!s:5}: "
                      + "  ".join(f"{m} {out.test_metrics[m]:.4f}" for m in METRICS), flush=True)  # fmt: skip
    lines = ["| model | context | " + " | ".join(METRICS) + " | Δ ndcg@10 (paired, per seed) |",
             "|---|---|" + "---:|" * (len(METRICS) + 1)]  # fmt: skip
    summary = {}
    for model in args.models:
        for context in (False, True):
            rs = [r for r in runs if r["model"] == model and r["context"] == context]
            cells = []
            for m in METRICS:
                xs = [r[m] for r in rs]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                cells.append(f"{statistics.mean(xs):.4f} ± {sd:.4f}")
                summary[f"{model}/{'context' if context else 'none'}/{m}"] = statistics.mean(xs)
            diff = ""
            if context:
                base = {r["seed"]: r["ndcg@10"] for r in runs if r["model"] == model and not r["context"]}
                diff = ", ".join(f"{r['ndcg@10'] - base[r['seed']]:+.4f}" for r in rs)
            lines.append(f"| {model} | {'on' if context else 'off'} | " + " | ".join(cells) + f" | {diff} |")
    write_result(args.out, "\n".join(lines), runs=runs, summary=summary, args=vars(args))


if __name__ == "__main__":
    main()
