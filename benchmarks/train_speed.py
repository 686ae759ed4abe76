"""Training throughput of config variants measured side by side: epochs of each variant alternate in
one process, so machine noise hits them alike; medians and ratios to the first variant.

    python benchmarks/train_speed.py                       # YoutubeDNN: configs/youtube_dnn.yaml vs its
                                                           # earlier 128-64 / 256-negative setting
    python benchmarks/train_speed.py -c configs/sasrec.yaml --variant small "model_params.hidden_size=64"

Counts predicted targets per second of the training loop (batch building, forward, backward, optimizer
step), as the trainer reports. Writes benchmarks/results/train_speed.json.
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
from components.config import load_config  # noqa: E402
from components.train import prepare, seed_everything  # noqa: E402
from models.data import n_targets, training_examples  # noqa: E402
from models.registry import build_model  # noqa: E402
from models.trainer import MatchTrainer  # noqa: E402

YOUTUBE_DNN_BEFORE = ["model_params.user_params={dims: [128, 64]}", "train.num_negatives=256"]


def setup(config: str, overrides: list[str], prepared):
    cfg = load_config(config, ["train.progress=false", *overrides])
    seed_everything(cfg.train.seed)
    _, enc, split = prepared
    model = build_model(cfg.model, enc.schema, **cfg.model_params)
    trainer = MatchTrainer(model, cfg.train, enc.data, split)
    L, ctx = cfg.train.max_len, model.train_context
    users, pos = training_examples(enc.data, split, model.causal, L, ctx)
    return trainer, users, pos, n_targets(split, model.causal, users, pos, L, ctx)


def epoch(s) -> float:
    """Examples/s of one training epoch, timed as ``MatchTrainer.fit`` times it."""
    trainer, users, pos, per_epoch = s
    t0 = time.perf_counter()
    trainer.train_epoch(users, pos)
    return per_epoch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="configs/youtube_dnn.yaml")
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                    help="a variant: its name, then overrides of the config (repeatable)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=8, help="epochs per variant")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/train_speed.json"))
    args = ap.parse_args()
    variants = {"config": []}
    if args.variant:
        variants |= {v[0]: v[1:] for v in args.variant}
    elif Path(args.config).name == "youtube_dnn.yaml":
        variants["128-64 tower, 256 negatives"] = YOUTUBE_DNN_BEFORE
    prepared = prepare(load_config(args.config, ["train.progress=false"]))
    setups = {name: setup(args.config, ov, prepared) for name, ov in variants.items()}
    for s in setups.values():
        epoch(s)  # warm-up, not counted
    speeds: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(args.rounds):
        for name, s in setups.items():
            speeds[name].append(epoch(s))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}/s" for n, v in speeds.items()), flush=True)
    base = statistics.median(speeds["config"])
    lines = ["| variant | overrides | median examples/s | min | max | vs config |", "|---|---|---:|---:|---:|---:|"]
    for name, v in speeds.items():
        med = statistics.median(v)
        lines.append(f"| {name} | {' '.join(variants[name]) or '–'} | {med:,.0f} | {min(v):,.0f} | {max(v):,.0f} | "
                     f"{med / base:.2f}× |")  # fmt: skip
    write_result(args.out, "\n".join(lines), config=args.config, rounds=args.rounds,
                 variants={n: {"overrides": variants[n], "examples_per_s": v} for n, v in speeds.items()})  # fmt: skip


if __name__ == "__main__":
    main()
