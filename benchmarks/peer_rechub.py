"""Runs one of Torch-RecHub's own MovieLens matching examples, as shipped, and times it per epoch.

Executed by ``benchmarks/peers.py`` with the Python of Torch-RecHub's own virtualenv (it imports
nothing from this project). The example script runs as ``__main__`` with its own argparse defaults
(hyper-parameters, preprocessing, model, trainer), except:

- ``--device cpu`` (the examples default to ``cuda:0`` on this machine's CPU-only torch);
- data loaders with ``num_workers=0`` (some examples ask for 6 or 8 worker processes: on two cores
  they compete with training and every epoch would pay their start-up);
- ``MatchTrainer.fit`` is replaced by the same loop of ``train_one_epoch`` calls with each epoch timed,
  followed (untimed) by Recall@20 of the example's test rows: every user's last event, ranked over
  every item with the user's earlier items masked — the held-out protocol of ``peers.py``;
- the example's own evaluation (Annoy, top-10, unmasked) is skipped.

Prints one line per epoch on stdout: ``EPOCH {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

COSINE = ("FaceBookDSSM", "YoutubeSBC")
EPOCH = "EPOCH "


def seen_items(csv: Path) -> dict[int, set[int]]:
    """Encoded user → encoded items before the user's last event (the examples' label encoding + 1)."""
    df = pd.read_csv(csv, usecols=["user_id", "movie_id", "timestamp"])
    users = np.searchsorted(np.unique(df.user_id), df.user_id) + 1
    items = np.searchsorted(np.unique(df.movie_id), df.movie_id) + 1
    order = np.lexsort((df.timestamp.to_numpy(), users))
    seen: dict[int, set[int]] = {}
    users, items = users[order], items[order]
    last = np.r_[users[1:] != users[:-1], True]
    for u, i, is_last in zip(users, items, last, strict=True):
        if not is_last:
            seen.setdefault(int(u), set()).add(int(i))
    return seen


@torch.no_grad()
def recall_at(model, test_dl, item_dl, test_user: dict, all_item: dict, seen: dict[int, set[int]], k: int) -> float:
    model.eval()

    def embed(mode: str, loader) -> torch.Tensor:
        model.mode = mode
        return torch.cat([model({n: v for n, v in batch.items()}) for batch in loader])

    users, items = embed("user", test_dl), embed("item", item_dl)
    model.mode = None
    items = items.reshape(items.size(0), -1)
    if type(model).__name__ in COSINE:  # trained on cosine; the examples retrieve with angular Annoy
        users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
    scores = users @ items.T if users.dim() == 2 else torch.einsum("bkd,nd->bkn", users, items).amax(1)
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    item_ids = np.asarray(all_item["movie_id"])
    column = {int(i): c for c, i in enumerate(item_ids)}
    target = np.asarray(test_user["movie_id"])
    for row, u in enumerate(np.asarray(test_user["user_id"])):
        cols = [column[i] for i in seen.get(int(u), ()) if i in column and i != int(target[row])]
        if cols:
            scores[row, cols] = float("-inf")
    # Ties count against the target, as in models.metrics: a hit is fewer than k items scored >= it.
    r = torch.arange(len(target))
    tcol = torch.tensor([column[int(t)] for t in target])
    ahead = scores >= scores[r, tcol].clone().unsqueeze(1)
    ahead[r, tcol] = False
    return float((ahead.sum(1) < k).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--example", required=True, help="path of the example script, e.g. examples/matching/run_ml_mind.py"
    )
    ap.add_argument("--data", required=True, help="CSV in the examples' ml-1m_sample layout")
    ap.add_argument("--workdir", required=True, help="where the example writes its ./data/ml-1m/saved/ files")
    ap.add_argument("--model-name", default=None, help="the example's --model_name (scripts with several models)")
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()

    from torch_rechub.trainers import MatchTrainer
    from torch_rechub.utils.data import MatchDataGenerator

    example = Path(args.example).resolve()
    data = Path(args.data).resolve()
    seen = seen_items(data)
    Path(args.workdir, "data/ml-1m/saved").mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)
    sys.path.insert(0, str(example.parent))
    import movielens_utils  # the examples' helper module, next to the scripts

    movielens_utils.match_evaluation = lambda *a, **kw: None
    state: dict = {}
    make_loaders = MatchDataGenerator.generate_dataloader

    def generate_dataloader(self, x_test_user, x_all_item, batch_size, num_workers=8):
        loaders = make_loaders(self, x_test_user, x_all_item, batch_size, num_workers=0)
        state.update(loaders=loaders, test_user=x_test_user, all_item=x_all_item)
        return loaders

    def fit(self, train_dl, val_dl=None):
        _, test_dl, item_dl = state["loaders"]
        x, rows = train_dl.dataset.x, len(train_dl.dataset)
        # An example is one positive target, as on our side: point-wise examples (mode 0) add each
        # sampled negative as a row of its own, labelled 0.
        examples = int((np.asarray(x["label"]) == 1).sum()) if self.mode == 0 and "label" in x else rows
        for epoch in range(1, self.n_epoch + 1):
            t0 = time.perf_counter()
            loss = self.train_one_epoch(train_dl)
            seconds = time.perf_counter() - t0
            with torch.random.fork_rng():  # evaluation must not move the training run's random stream
                recall = recall_at(self.model, test_dl, item_dl, state["test_user"], state["all_item"], seen, args.k)
            line = {"epoch": epoch, "seconds": seconds, "rows": rows, "examples": examples,
                    "examples_per_s": examples / seconds, "loss": float(loss), f"recall@{args.k}": recall}  # fmt: skip
            print(EPOCH + json.dumps(line), flush=True)

    MatchDataGenerator.generate_dataloader = generate_dataloader
    MatchTrainer.fit = fit
    MatchTrainer.inference_embedding = lambda self, *a, **kw: torch.zeros(0)
    sys.argv = [str(example), "--dataset_path", str(data), "--device", "cpu"]
    if args.model_name:
        sys.argv += ["--model_name", args.model_name]
    runpy.run_path(str(example), run_name="__main__")


if __name__ == "__main__":
    main()
