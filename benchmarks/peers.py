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
EPOCH = "EPOCH "  # the prefix of both runners' per-epoch lines


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


def run_ours(model: str) -> list[dict]:
    return epochs_of(subprocess.run([sys.executable, __file__, "--ours", model], capture_output=True, text=True),
                     f"our {model}")  # fmt: skip


def epochs_of(out: subprocess.CompletedProcess, what: str) -> list[dict]:
    epochs = [json.loads(line[len(EPOCH) :]) for line in out.stdout.splitlines() if line.startswith(EPOCH)]
    if out.returncode or not epochs:
        raise SystemExit(f"{what} failed (exit {out.returncode}, {len(epochs)} epochs):\n{out.stderr[-3000:]}")
    return epochs


def train_ours(model: str) -> None:
    """One of our runs, printed per epoch like the peer runner's (called in a fresh process)."""
    from components.config import load_config
    from components.train import prepare, seed_everything
    from models.registry import build_model
    from models.trainer import MatchTrainer

    cfg = load_config(ROOT / "configs" / f"{model}.yaml", ["data.source=ml100k", "train.progress=false"])
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
    args = ap.parse_args()
    if args.ours:
        return train_ours(args.ours)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        return report(saved["runs"], args.out, saved["rounds"])

    python, examples = build_peer(Path(args.venv))
    runs: dict[str, dict[str, list[list[dict]]]] = {m: {"peer": [], "ours": []} for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "ml100k_without_test.csv")
        say(f"exported {export_events(data):,} events")
        for r in range(args.rounds):
            for m in args.models:
                for side in ("peer", "ours") if r % 2 == 0 else ("ours", "peer"):
                    epochs = run_peer(python, examples, m, data) if side == "peer" else run_ours(m)
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

    lines = [f"| model | Torch-RecHub examples/s | ours examples/s | ours vs peer | Torch-RecHub best R@{K} "
             f"(s to reach) | ours best R@{K} (s to reach) | ours: s to the peer's best |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    summary = {}
    for m, sides in runs.items():
        row: dict = {}
        for side, rs in sides.items():
            ttq = [time_to_best(e) for e in rs]
            row[side] = {
                "examples_per_s": statistics.median(e["examples_per_s"] for epochs in rs for e in epochs),
                "epochs": [len(epochs) for epochs in rs],
                "best_epoch": [max(epochs, key=lambda e: e[f"recall@{K}"])["epoch"] for epochs in rs],
                "seconds_to_best": statistics.median(t[0] for t in ttq),
                f"best_recall@{K}": statistics.median(t[1] for t in ttq),
            }
        p, o = row["peer"], row["ours"]
        row["ratio"] = o["examples_per_s"] / p["examples_per_s"]
        reach = [seconds_to_reach(e, p[f"best_recall@{K}"]) for e in sides["ours"]]
        row["ours_seconds_to_peer_best"] = statistics.median(r for r in reach if r is not None) if all(
            r is not None for r in reach) else None  # fmt: skip
        summary[m] = row
        to_peer = "never" if row["ours_seconds_to_peer_best"] is None else f"{row['ours_seconds_to_peer_best']:.1f} s"
        lines.append(f"| {m} | {p['examples_per_s']:,.0f} | {o['examples_per_s']:,.0f} | {row['ratio']:.2f}× | "
                     f"{p[f'best_recall@{K}']:.4f} ({p['seconds_to_best']:.0f} s) | "
                     f"{o[f'best_recall@{K}']:.4f} ({o['seconds_to_best']:.0f} s) | {to_peer} |")  # fmt: skip
    write_result(out, "\n".join(lines), peer=PEER, rounds=rounds, summary=summary, runs=runs)


if __name__ == "__main__":
    main()
