"""Single process vs data-parallel training (torchrun) on the same recipe: full runs, each from a fresh
process, alternating, so machine noise hits both alike. Reports training examples/s (all ranks
together), training seconds, the best epoch and test metrics per run, then medians.

    python benchmarks/ddp.py                                         # demo world, 2 ranks, CPU (gloo)
    python benchmarks/ddp.py -c configs/sasrec.yaml -s train.device=cuda --seeds 0 1 --nproc 2

Ranks share the global batch (``batch_size`` rows per step in all), so a DDP run follows the same
recipe as the single-process run, not the same trajectory: compare its metrics with the spread over
seeds. With one GPU, two CUDA ranks share it over gloo (NCCL refuses two ranks on one device).
Writes benchmarks/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402

DEMO = ["train.epochs=30", "train.patience=6", "train.batch_size=128", "train.lr=0.005"]
COLS = ("recall@20", "ndcg@10")


def one_run(nproc: int, config: str | None, settings: list[str], seed: int, threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"ddp{nproc}-"))
    train = ["-m", "components.cli", "train", *(["-c", config] if config else [])]
    for kv in [*settings, "train.progress=false", f"train.seed={seed}", f"out_dir={out}"]:
        train += ["-s", kv]
    launch = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *launch, *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    m = json.loads((out / "metrics.json").read_text())
    row = {"nproc": nproc, "seed": seed, "wall_s": wall, "train_s": m["train_seconds"],
           "examples_per_s": m["examples_per_s"], "best_epoch": m["best_epoch"],
           "epochs": len(m["history"]), **{c: m["test_metrics"][c] for c in COLS}}  # fmt: skip
    print(f"nproc {nproc} seed {seed}: {row['examples_per_s']:,.0f} examples/s, {row['train_s']:.1f} s training, "
          f"best epoch {row['best_epoch']}, recall@20 {row['recall@20']:.4f}", flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=None, help="run config (default: the demo world, DEMO recipe)")
    ap.add_argument("-s", "--set", dest="settings", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by a run's ranks")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ddp.json"))
    args = ap.parse_args()
    settings = args.settings if args.config else [*DEMO, *args.settings]
    rows = []
    for seed in args.seeds:
        for n in (1, args.nproc):
            rows.append(one_run(n, args.config, settings, seed, args.threads))
    lines = ["| processes | runs | median examples/s | median train s | best epochs | recall@20 (min–max) "
             "| ndcg@10 (min–max) |", "|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for n in (1, args.nproc):
        r = [x for x in rows if x["nproc"] == n]
        rng = {c: f"{min(x[c] for x in r):.4f}–{max(x[c] for x in r):.4f}" for c in COLS}
        epochs = ", ".join(str(x["best_epoch"]) for x in r)
        lines.append(f"| {n} | {len(r)} | {statistics.median(x['examples_per_s'] for x in r):,.0f} | "
                     f"{statistics.median(x['train_s'] for x in r):.1f} | {epochs} | {rng['recall@20']} | "
                     f"{rng['ndcg@10']} |")  # fmt: skip
    write_result(args.out, "\n".join(lines), config=args.config or "demo", settings=settings, runs=rows)


if __name__ == "__main__":
    main()
