"""Evaluation component: a trained run directory → test metrics beside popularity, and top-K lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from models.data import train_item_counts
from models.evaluation import evaluate_model, evaluate_popularity, item_embeddings, user_embeddings
from models.metrics import topk
from models.registry import load_checkpoint

from .config import config_from_dict
from .train import prepare


@dataclass(frozen=True)
class EvalOutput:
    model: str
    test: dict[str, float]
    test_unmasked: dict[str, float]
    popularity: dict[str, float]


def _load(run_dir: str | Path):
    model, config = load_checkpoint(run_dir)
    run = config.get("run")
    if run is None:
        raise ValueError(f"{run_dir}/config.json has no 'run' section; was it written by `recall train`?")
    return model, config_from_dict(run)


def run(run_dir: str | Path) -> EvalOutput:
    """Re-scores a saved run on its test events (full corpus, with and without seen-item masking)."""
    model, cfg = _load(run_dir)
    _, enc, split = prepare(cfg)
    L = cfg.train.max_len
    test = evaluate_model(model, enc.data, split, "test", L, True, cfg.ks)
    unmasked = evaluate_model(model, enc.data, split, "test", L, False, cfg.ks)
    pop = evaluate_popularity(train_item_counts(enc.data, split), enc.data, split, "test", True, cfg.ks)
    return EvalOutput(model.name, test, unmasked, pop)


def recommend(run_dir: str | Path, user_id: int, k: int = 10) -> pd.DataFrame:
    """Top-k unseen items for a raw user id, from everything the user did (the next event)."""
    model, cfg = _load(run_dir)
    tables, enc, _ = prepare(cfg)
    matches = (enc.user_ids == user_id).nonzero()[0]
    if len(matches) == 0:
        raise ValueError(f"unknown user {user_id!r}; known ids run from {enc.user_ids[1]} to {enc.user_ids[-1]}")
    u = torch.tensor([int(matches[0])])
    pos = enc.data.lengths[u]
    ue = user_embeddings(model, enc.data, u, pos, cfg.train.max_len)
    seen = (torch.tensor([0, int(pos)]), enc.data.items[enc.data.indptr[u] : enc.data.indptr[u] + pos])
    scores, idx = topk(ue, item_embeddings(model, enc.data), k, seen)
    raw = enc.item_ids[idx[0].numpy()]
    items = tables.items.set_index("item_id")
    return pd.DataFrame(
        {
            "rank": range(1, len(raw) + 1),
            "item_id": raw,
            "title": [items.title.get(i, "") for i in raw],
            "genres": [", ".join(items.genres.get(i, [])) for i in raw],
            "score": scores[0].numpy().round(4),
        }
    )


def metrics_table(rows: dict[str, dict[str, float]], ks: tuple[int, ...] = (10, 20, 50, 100)) -> str:
    """Markdown table: one row per model, Recall/NDCG/Hit/MRR/Precision at each K."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit", "mrr", "precision")]
    head = "| model | " + " | ".join(cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    body = [
        f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in cols) + " |" for name, m in rows.items()
    ]
    return "\n".join([head, sep, *body])
