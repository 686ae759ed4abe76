"""Our models beside Torch-RecHub 0.9.0's own MovieLens examples: training speed and time to quality.

    python benchmarks/peers.py                          # every model with a peer example, 2 rounds
    python benchmarks/peers.py --models mind gru4rec --rounds 3

Torch-RecHub is built in its own virtualenv (``--venv``, default ``.peers/torch-rechub-0.9.0``:
``pip install torch==2.13.0 torch-rechub==0.9.0`` and the sdist's ``examples/matching``); it is never a
dependency of this project. Its examples run as shipped (their hyper-parameters, preprocessing,
models and trainer; see ``benchmarks/peer_rechub.py`` for the three things changed: CPU, no loader
worker processes, a timed epoch loop). Ours run ``configs/<model>.yaml`` to early stopping.

Both see the same events: ML-100K in our event order without each user's test event, so each user's
last event — the examples' own test row — is our validation event. Both report Recall@20 on those
events over the full catalogue with the user's earlier items masked. Runs alternate (peer then ours in odd
rounds, ours then peer in even ones) in fresh processes with torch's default threads.

Per model: training examples/s — an example is one positive target on both sides (the peer's
point-wise examples count their positive rows only; its list-/pair-wise rows are one positive with its
sampled negatives) — as the median over every epoch of every round, the ratio, and time to quality:
seconds of training until each run reached its best validation Recall@20, and that value (medians over
rounds); and the seconds our run needed to reach the peer's best value. Evaluation and preprocessing
are outside the timed seconds on both sides. Writes benchmarks/results/peers.json; ``--report`` re-renders
the table of a saved result.

Differences that remain, by construction: the peer runs its fixed 8–10 epochs (no early stopping) and
ranks the 1,679 items of the exported events (three items occur only in test events), where we rank all
1,682; its popularity-based negatives count every exported row, validation events included; its
GRU4Rec, MIND and ComiRec examples truncate histories with ``truncating='post'`` (the oldest 50 items);
and the two sides do different work per example (3 sampled negatives there, our recipe's loss here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER = "torch-rechub==0.9.0"
# our registry name → (Torch-RecHub example script, its --model_name where the script has several)
EXAMPLES = {
    "dssm": ("run_ml_dssm.py", None),
    "facebook_dssm": ("run_ml_facebook_dssm.py", None),
    "youtube_dnn": ("run_ml_youtube_dnn.py", None),
    "youtube_sbc": ("run_ml_youtube_sbc.py", None),
    "gru4rec": ("run_ml_gru4rec.py", None),
    "mind": ("run_ml_mind.py", None),
    "comirec_dr": ("run_ml_comirec.py", "comirec_dr"),
    "comirec_sa": ("run_ml_comirec.py", "comirec_sa"),
    "sine": ("run_ml_sine.py", None),
}  # NARM, STAMP and SASRec have no MovieLens example in Torch-RecHub 0.9.0.
K = 20

# Our models at each example's own settings, for a like-for-like speed ratio: the example's embedding size,
# towers, temperature, loss mode, three popularity negatives per row (count^0.75, its sample_method=1,
# drawn per row, no log-Q), batch size, learning rate, weight decay and epoch count. Our architecture stays
# ours (e.g. our GRU4Rec's GRU has biases, our DSSM towers use ReLU where the example uses PReLU).
PEER_COMMON = [
    "train.num_negatives=3", "train.negative=popularity", "train.alpha=0.75", "train.shared_negatives=false",
    "train.logq=false", "train.weight_decay=0.000001", "train.max_len=50", "model_params.temperature=0.02",
]  # fmt: skip
LISTWISE_256 = ["train.mode=listwise", "train.batch_size=256", "train.lr=0.001", "train.epochs=10"]
PEER_SETTINGS = {
    "dssm": [
        "model_params.embed_dim=16", "model_params.user_params={dims: [256, 128, 64]}",
        "model_params.item_params={dims: [256, 128, 64]}", "train.mode=pointwise", "train.batch_size=4096",
        "train.lr=0.0001", "train.epochs=10",
    ],
    "facebook_dssm": [
        "model_params.embed_dim=16", "model_params.user_params={dims: [256, 128, 64, 32], dropout: 0}",
        "model_params.item_params={dims: [256, 128, 64, 32], dropout: 0}", "train.mode=pairwise", "train.margin=0",
        "train.hard_share=1.0", "train.hard_window=null", "train.batch_size=2048", "train.lr=0.0001",
        "train.epochs=10",
    ],
    "youtube_dnn": [
        "model_params.embed_dim=16", "model_params.user_params={dims: [128, 64, 16]}", "model_params.history_len=50",
        "train.max_len=100",  # windows of 100 events, each example sees the 50 before its target
        "train.mode=listwise", "train.batch_size=2048", "train.lr=0.0001", "train.epochs=10",
    ],
    "youtube_sbc": [
        "model_params.embed_dim=16", "model_params.user_params={dims: [128, 64, 16]}",
        "model_params.item_params={dims: [128, 64, 16]}", "train.mode=listwise", "train.negative=inbatch",
        "train.logq=true", "train.batch_size=512", "train.lr=0.001", "train.epochs=8",
    ],
    "gru4rec": ["model_params.embedding_dim=16", "model_params.hidden_size=16", "model_params.num_layers=2",
                *LISTWISE_256],
    "mind": ["model_params.embedding_dim=16", "model_params.n_interest=4", *LISTWISE_256],
    "comirec_dr": ["model_params.embedding_dim=16", "model_params.n_interest=4", *LISTWISE_256],
    "comirec_sa": ["model_params.embedding_dim=16", "model_params.n_interest=4", "model_params.hidden_size=64",
                   *LISTWISE_256],
    "sine": [
        "model_params.embedding_dim=128", "model_params.hidden_size=512", "model_params.n_concepts=10",
        "model_params.n_interest=2", "model_params.temperature=0.1", *LISTWISE_256,
    ],
}  # fmt: skip
EPOCH = "EPOCH "  # the prefix of both runners' per-epoch lines
SIDES = ("peer", "matched", "ours")  # the example; ours at its settings; our recipe


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_peer(root: Path) -> tuple[Path, Path]:
    """The peer's Python and its examples directory, built once."""
    python, examples = root / "bin/python", root / "examples/matching"
    if python.exists() and examples.exists():
        return python, examples
    say(f"building {PEER} in {root} (once; a few minutes)")
    venv.create(root, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0", PEER], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                        PEER], check=True)  # fmt: skip
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/examples/matching/" in m.name and m.isfile()]
            for m in members:
                m.name = m.name.split("/examples/matching/", 1)[1]
            tar.extractall(examples, members=members, filter="data")
    return python, examples


def export_events(path: Path) -> int:
    """ML-100K without the test events, in the examples' ``ml-1m_sample.csv`` layout.

    ``timestamp`` is the event's position in our per-user order (file order on equal timestamps), so
    the examples' sort puts events exactly where our split has them. ``rating`` is not used by the
    examples and is written as 0."""
    import pandas as pd

    from components.datasets import encode, load_ml100k
    from models.data import event_positions, leave_last_out

    tables = load_ml100k()
    enc = encode(tables)
    data, split = enc.data, leave_last_out(enc.data)
    user, pos = event_positions(data)
    keep = pos != split.test_pos[user]  # users without held-out events keep everything (test_pos −1)
    user, item = user[keep].numpy(), data.items[keep].numpy()
    events = pd.DataFrame({"user_id": enc.user_ids[user], "movie_id": enc.item_ids[item], "rating": 0,
                           "timestamp": pos[keep].numpy()})  # fmt: skip
    items = tables.items.assign(genres=[("|".join(g) or "unknown") for g in tables.items.genres])
    users = tables.users.assign(zip="z" + tables.users.zip_prefix)  # never read back as a number
    rows = events.merge(items[["item_id", "title", "genres"]].rename(columns={"item_id": "movie_id"}), on="movie_id")
    rows = rows.merge(users[["user_id", "gender", "age_bucket", "occupation", "zip"]], on="user_id")
    cols = ["user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age", "occupation", "zip"]
    rows.rename(columns={"age_bucket": "age"})[cols].to_csv(path, index=False)
    return len(rows)


def run_peer(python: Path, examples: Path, model: str, data: Path) -> list[dict]:
    script, name = EXAMPLES[model]
    with tempfile.TemporaryDirectory() as work:
        cmd = [str(python), str(ROOT / "benchmarks/peer_rechub.py"), "--example", str(examples / script),
               "--data", str(data), "--workdir", work, "--k", str(K)]  # fmt: skip
        if name:
            cmd += ["--model-name", name]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"TQDM_DISABLE": "1"}
        return epochs_of(subprocess.run(cmd, capture_output=True, text=True, env=env), f"Torch-RecHub {model}")


def run_ours(model: str, matched: bool = False) -> list[dict]:
    cmd = [sys.executable, __file__, "--ours", model] + (["--matched"] if matched else [])
    return epochs_of(subprocess.run(cmd, capture_output=True, text=True), f"our {model}")


def epochs_of(out: subprocess.CompletedProcess, what: str) -> list[dict]:
    epochs = [json.loads(line[len(EPOCH) :]) for line in out.stdout.splitlines() if line.startswith(EPOCH)]
    if out.returncode or not epochs:
        raise SystemExit(f"{what} failed (exit {out.returncode}, {len(epochs)} epochs):\n{out.stderr[-3000:]}")
    return epochs


def train_ours(model: str, matched: bool) -> None:
    """One of our runs, printed per epoch like the peer runner's (called in a fresh process): our recipe to
    early stopping, or (``matched``) the example's settings for its epoch count."""
    from components.config import load_config
    from components.train import prepare, seed_everything
    from models.registry import build_model
    from models.trainer import MatchTrainer

    overrides = ["data.source=ml100k", "train.progress=false"] + (PEER_COMMON + PEER_SETTINGS[model] if matched else [])
    cfg = load_config(ROOT / "configs" / f"{model}.yaml", overrides)
    if matched:  # every epoch the example runs: no early stopping
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, patience=cfg.train.epochs))
    seed_everything(cfg.train.seed)
    _, enc, split = prepare(cfg)
    net = build_model(cfg.model, enc.schema, **cfg.model_params)
    trainer = MatchTrainer(net, cfg.train, enc.data, split)
    result = trainer.fit()
    per_epoch = result.examples / max(len(result.history), 1)
    for h in result.history:
        line = {"epoch": h["epoch"], "seconds": h["seconds"], "examples": per_epoch,
                "examples_per_s": per_epoch / h["seconds"], f"recall@{K}": h[f"recall@{K}"]}  # fmt: skip
        print(EPOCH + json.dumps(line))


def time_to_best(epochs: list[dict]) -> tuple[float, float]:
    """(seconds of training until the best validation Recall@K, that Recall@K)."""
    best = max(range(len(epochs)), key=lambda i: epochs[i][f"recall@{K}"])
    return sum(e["seconds"] for e in epochs[: best + 1]), epochs[best][f"recall@{K}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(EXAMPLES), choices=list(EXAMPLES), metavar="MODEL")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per side")
    ap.add_argument("--venv", default=str(ROOT / ".peers/torch-rechub-0.9.0"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/peers.json"))
    ap.add_argument("--report", metavar="JSON", help="only re-render the table of a saved result's runs")
    ap.add_argument("--ours", help=argparse.SUPPRESS)
    ap.add_argument("--matched", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours:
        return train_ours(args.ours, args.matched)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        return report(saved["runs"], args.out, saved["rounds"])

    python, examples = build_peer(Path(args.venv))
    runs: dict[str, dict[str, list[list[dict]]]] = {m: {s: [] for s in SIDES} for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "ml100k_without_test.csv")
        say(f"exported {export_events(data):,} events")
        for r in range(args.rounds):
            for m in args.models:
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    epochs = run_peer(python, examples, m, data) if side == "peer" else run_ours(m, side == "matched")
                    runs[m][side].append(epochs)
                    secs, best = time_to_best(epochs)
                    speed = statistics.median(e["examples_per_s"] for e in epochs)
                    last = " (best at its last epoch)" if epochs[-1][f"recall@{K}"] >= best else ""
                    say(f"round {r + 1} {m} {side}: {speed:,.0f} examples/s, best Recall@{K} {best:.4f} "
                        f"after {secs:.1f} s of training ({len(epochs)} epochs){last}")  # fmt: skip
    report(runs, args.out, args.rounds)


def seconds_to_reach(epochs: list[dict], value: float) -> float | None:
    """Seconds of training until a run first reached Recall@K ``value`` (None: never)."""
    total = 0.0
    for e in epochs:
        total += e["seconds"]
        if e[f"recall@{K}"] >= value:
            return total
    return None


def report(runs: dict[str, dict[str, list[list[dict]]]], out: str, rounds: int) -> None:
    from benchmarks.common import write_result

    def speed(v: float | None) -> str:
        return "–" if v is None else f"{v:,.0f}"

    def best(side: dict | None) -> str:
        return "–" if side is None else f"{side[f'best_recall@{K}']:.4f} ({side['seconds_to_best']:.0f} s)"

    lines = [f"| model | Torch-RecHub examples/s | ours at its settings | ratio | ours, our recipe | "
             f"Torch-RecHub best R@{K} (s to reach) | ours at its settings | ours, our recipe | "
             f"ours: s to the peer's best |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    summary = {}
    for m, sides in runs.items():
        row: dict = {}
        for side, rs in sides.items():
            if not rs:
                continue
            ttq = [time_to_best(e) for e in rs]
            row[side] = {
                "examples_per_s": statistics.median(e["examples_per_s"] for epochs in rs for e in epochs),
                "epochs": [len(epochs) for epochs in rs],
                "best_epoch": [max(epochs, key=lambda e: e[f"recall@{K}"])["epoch"] for epochs in rs],
                "seconds_to_best": statistics.median(t[0] for t in ttq),
                f"best_recall@{K}": statistics.median(t[1] for t in ttq),
            }
        p, o, mt = row["peer"], row["ours"], row.get("matched")
        # The speed ratio compares like with like: ours at the example's settings (our recipe does other work
        # per example: a full softmax over the catalogue, 64-d embeddings, hard negatives).
        row["ratio"] = mt["examples_per_s"] / p["examples_per_s"] if mt else None
        row["ratio_own_recipe"] = o["examples_per_s"] / p["examples_per_s"]
        reach = [seconds_to_reach(e, p[f"best_recall@{K}"]) for e in sides["ours"]]
        row["ours_seconds_to_peer_best"] = statistics.median(r for r in reach if r is not None) if all(
            r is not None for r in reach) else None  # fmt: skip
        summary[m] = row
        to_peer = "never" if row["ours_seconds_to_peer_best"] is None else f"{row['ours_seconds_to_peer_best']:.1f} s"
        ratio = "–" if row["ratio"] is None else f"{row['ratio']:.2f}×"
        lines.append(f"| {m} | {speed(p['examples_per_s'])} | {speed(mt and mt['examples_per_s'])} | {ratio} | "
                     f"{speed(o['examples_per_s'])} | {best(p)} | {best(mt)} | {best(o)} | {to_peer} |")  # fmt: skip
    write_result(out, "\n".join(lines), peer=PEER, rounds=rounds, summary=summary, runs=runs)


if __name__ == "__main__":
    main()
