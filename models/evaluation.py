"""Embedding inference and honest evaluation of any registered model on a split."""

from __future__ import annotations

import torch

from .base import RecallModel
from .data import SequenceData, Split, build_batch, item_batch, seen_before
from .metrics import DEFAULT_KS, metrics_from_ranks, target_ranks


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def user_embeddings(
    model: RecallModel,
    data: SequenceData,
    users: torch.Tensor,
    pos: torch.Tensor,
    max_len: int,
    batch_size: int = 1024,
) -> torch.Tensor:
    """User vectors for predicting each user's event at ``pos`` (history = events before it)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        model.user_tower(_to(build_batch(data, users[i : i + batch_size], pos[i : i + batch_size], max_len), device))
        .float()
        .cpu()
        for i in range(0, users.numel(), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def item_embeddings(model: RecallModel, data: SequenceData, batch_size: int = 65536) -> torch.Tensor:
    """Item vectors for every item index (row 0 is padding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for lo in range(0, data.n_items, batch_size):
        idx = torch.arange(lo, min(data.n_items, lo + batch_size))
        out.append(model.item_tower(_to(item_batch(data, idx), device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def eval_rows(data: SequenceData, split: Split, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users, positions, target items) of the users evaluated on ``which`` ("val" or "test")."""
    users, pos = split.eval_users(which), split.eval_positions(which)
    return users, pos, data.items[data.indptr[users] + pos]


def model_ranks(
    model: RecallModel,
    data: SequenceData,
    split: Split,
    which: str = "test",
    max_len: int = 50,
    exclude_seen: bool = True,
) -> torch.Tensor:
    """(R,) 0-based full-corpus rank of each evaluated user's target on ``which`` (see :func:`eval_rows`).

    With ``exclude_seen`` every item the user interacted with before the target is removed from the
    ranking (the target itself is kept even if it is a repeat).
    """
    users, pos, targets = eval_rows(data, split, which)
    exclude = seen_before(data, users, pos) if exclude_seen else None
    user_emb = user_embeddings(model, data, users, pos, max_len)
    return target_ranks(user_emb, item_embeddings(model, data), targets, exclude).squeeze(1)


def popularity_ranks(
    counts: torch.Tensor, data: SequenceData, split: Split, which: str = "test", exclude_seen: bool = True
) -> torch.Tensor:
    """The popularity baseline's ranks on the same rows: every user scores item i by its train count."""
    users, pos, targets = eval_rows(data, split, which)
    exclude = seen_before(data, users, pos) if exclude_seen else None
    return target_ranks(torch.ones(users.numel(), 1), counts.float().unsqueeze(1), targets, exclude).squeeze(1)


def evaluate_model(
    model: RecallModel,
    data: SequenceData,
    split: Split,
    which: str = "test",
    max_len: int = 50,
    exclude_seen: bool = True,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, float]:
    """Full-corpus metrics on the validation or test events (one target per row, see :func:`model_ranks`)."""
    return metrics_from_ranks(model_ranks(model, data, split, which, max_len, exclude_seen), ks)


def evaluate_popularity(
    counts: torch.Tensor,
    data: SequenceData,
    split: Split,
    which: str = "test",
    exclude_seen: bool = True,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, float]:
    """The popularity baseline on the same evaluator."""
    return metrics_from_ranks(popularity_ranks(counts, data, split, which, exclude_seen), ks)
