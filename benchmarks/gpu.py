"""The CUDA training path measured on one GPU: every model's training throughput with bf16 autocast
(AMP) on and off, epochs alternating in one process; then full training runs on the GPU with AMP on
(early stopping, full-corpus test), set beside the CPU reference in benchmarks/results/accuracy.json.

    python benchmarks/gpu.py                               # all models, 3 rounds, then the parity runs
    python benchmarks/gpu.py --models sasrec --rounds 2 --parity sasrec

Needs a CUDA device (``--device cpu`` runs the same code on the CPU, as a smoke test). Examples/s
counts predicted targets per second of the training loop, as the trainer reports. Writes
benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.train_speed import epoch, setup  # noqa: E402
from components import train  # noqa: E402
from components.config import load_config  # noqa: E402
from models.registry import MODELS  # noqa: E402

PARITY = ["sasrec", "youtube_dnn", "gru4rec", "comirec_sa", "mind", "dssm"]
PARITY_COLS = ["recall@20", "ndcg@10"]


def speed(models: list[str], rounds: int, device: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for name in models:
        config = ROOT / "configs" / f"{name}.yaml"
        base = ["data.source=ml100k", f"train.device={device}"]
        prepared = train.prepare(load_config(config, base))
        variants = {"amp": setup(str(config), [*base, "train.amp=true"], prepared),
                    "fp32": setup(str(config), [*base, "train.amp=false"], prepared)}  # fmt: skip
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for s in variants.values():
            epoch(s)  # warm-up: kernels, allocator, autotuning
        speeds: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v, s in variants.items():
                speeds[v].append(epoch(s))
        med = {v: statistics.median(x) for v, x in speeds.items()}
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        rows[name] = {"examples_per_s": speeds, "median": med, "amp_vs_fp32": med["amp"] / med["fp32"],
                      "peak_gpu_mib": peak}  # fmt: skip
        print(f"{name}: amp {med['amp']:,.0f}/s, fp32 {med['fp32']:,.0f}/s ({rows[name]['amp_vs_fp32']:.2f}×)",
              flush=True)  # fmt: skip
        del variants
    return rows


def parity(models: list[str], device: str, deadline: float, amp: bool) -> dict[str, dict]:
    """Full runs (the accuracy benchmark's protocol) on ``device``, until ``deadline``."""
    ref_path = ROOT / "benchmarks/results/accuracy.json"
    ref = json.loads(ref_path.read_text())["models"] if ref_path.exists() else {}
    rows: dict[str, dict] = {}
    for name in models:
        if time.monotonic() > deadline:
            print(f"parity: out of time before {name}", flush=True)
            break
        overrides = ["data.source=ml100k", "train.progress=false", f"train.device={device}", f"train.amp={amp}",
                     f"out_dir=runs/bench-gpu/{name}"]  # fmt: skip
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
        t0 = time.perf_counter()
        out = train.run(cfg)
        cpu = ref.get(name, {})
        same_recipe = bool(cpu) and _recipe(cpu["config"]) == _recipe(cfg.to_dict())
        rows[name] = {"gpu": {c: out.test_metrics[c] for c in PARITY_COLS}, "best_epoch": out.best_epoch,
                      "train_seconds": out.train_seconds, "wall_seconds": time.perf_counter() - t0,
                      "examples_per_s": out.examples_per_s,
                      "cpu": {c: cpu["masked"][c] for c in PARITY_COLS} if cpu else None,
                      "cpu_best_epoch": cpu.get("best_epoch"), "cpu_train_seconds": cpu.get("train_seconds"),
                      "same_recipe": same_recipe, "amp": amp}  # fmt: skip
        print(f"parity {name}: ndcg@10 {out.test_metrics['ndcg@10']:.4f} (cpu {rows[name]['cpu']}), "
              f"{out.train_seconds:.1f} s training", flush=True)  # fmt: skip
    return rows


def _recipe(run: dict) -> dict:
    """The parts of a run config that decide the result (not where or how visibly it runs)."""
    t = {k: v for k, v in run["train"].items() if k not in ("device", "amp", "progress")}
    return {"model": run["model"], "model_params": run["model_params"], "train": t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per variant (after one warm-up)")
    ap.add_argument("--parity", nargs="*", default=PARITY, help="models trained to the end on the GPU")
    ap.add_argument("--budget-s", type=float, default=240, help="no parity run starts after this many seconds")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parity-amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast in the full runs")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu.json"))
    args = ap.parse_args()
    start = time.monotonic()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark measures the GPU path (--device cpu for a smoke run)")
    name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(f"device {name}, torch {torch.__version__}", flush=True)
    rows = speed(args.models, args.rounds, args.device)
    par = parity(args.parity, args.device, start + args.budget_s, args.parity_amp)
    lines = [f"Training throughput on {name} (ML-100K; median of {args.rounds} epochs per variant, alternating)", "",
             "| model | AMP bf16 examples/s | fp32 examples/s | AMP vs fp32 | peak GPU MiB |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for m, r in rows.items():
        peak = f"{r['peak_gpu_mib']:,.0f}" if r["peak_gpu_mib"] is not None else "–"
        lines.append(f"| {m} | {r['median']['amp']:,.0f} | {r['median']['fp32']:,.0f} | {r['amp_vs_fp32']:.2f}× "
                     f"| {peak} |")  # fmt: skip
    if par:
        lines += ["", f"Full runs on the GPU ({'AMP bf16' if args.parity_amp else 'fp32'}) beside the CPU reference "
                  "(benchmarks/results/accuracy.json)", "",
                  "| model | same recipe | GPU recall@20 | CPU recall@20 | GPU ndcg@10 | CPU ndcg@10 | GPU best epoch "
                  "| CPU best epoch | GPU train s | CPU train s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for m, r in par.items():
            cpu = r["cpu"] or {c: float("nan") for c in PARITY_COLS}
            lines.append(f"| {m} | {'yes' if r['same_recipe'] else 'no'} | {r['gpu']['recall@20']:.4f} | "
                         f"{cpu['recall@20']:.4f} | {r['gpu']['ndcg@10']:.4f} | {cpu['ndcg@10']:.4f} | "
                         f"{r['best_epoch']} | {r['cpu_best_epoch']} | {r['train_seconds']:.1f} | "
                         f"{r['cpu_train_seconds']} |")  # fmt: skip
    write_result(args.out, "\n".join(lines), device=name, torch=torch.__version__, rounds=args.rounds,
                 speed=rows, parity=par)  # fmt: skip


if __name__ == "__main__":
    main()
