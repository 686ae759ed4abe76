"""Tensor-side data: per-user event sequences (CSR), feature tables, the leave-last-out split,
and batch builders for point examples and causal sequence windows.

User u's events, oldest → newest, are ``items[indptr[u]:indptr[u+1]]``; user and item indices are
1-based (row 0 of every table is padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Batch


@dataclass
class SequenceData:
    """Encoded interactions and feature tables, all torch tensors."""

    indptr: torch.Tensor  # (U+1,) int64; row 0 is the padding user and is empty
    items: torch.Tensor  # (E,) int64 item index per event
    times: torch.Tensor  # (E,) float64 unix seconds per event
    user_table: dict[str, torch.Tensor]  # name → (U, ...) per-user features; "user_id" = arange
    item_table: dict[str, torch.Tensor]  # name → (N, ...) per-item features; "item_id" = arange
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    # name → (E,) per-event features, small ints of any dtype: the context of each event's moment
    # (value + 1; 0 = padding); batches get them as int64
    event_table: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.indptr.numel() - 1

    @property
    def n_items(self) -> int:
        return next(iter(self.item_table.values())).size(0)

    @property
    def lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]


@dataclass
class Split:
    """Leave-last-out: per user, last event → test, second last → validation, the rest → train.

    ``train_end[u]`` is the number of training events of user u; ``val_pos``/``test_pos`` are event
    positions (relative to the user's start) or -1 for users with fewer than 3 events, whose events
    all go to training.
    """

    train_end: torch.Tensor
    val_pos: torch.Tensor
    test_pos: torch.Tensor

    def eval_users(self, which: str) -> torch.Tensor:
        pos = self.val_pos if which == "val" else self.test_pos
        return (pos >= 0).nonzero(as_tuple=True)[0]

    def eval_positions(self, which: str) -> torch.Tensor:
        if which not in ("val", "test"):
            raise ValueError(f"unknown split {which!r}; choose one of: val, test")
        pos = self.val_pos if which == "val" else self.test_pos
        return pos[self.eval_users(which)]


def leave_last_out(data: SequenceData) -> Split:
    n = data.lengths
    has_eval = n >= 3
    test = torch.where(has_eval, n - 1, torch.full_like(n, -1))
    val = torch.where(has_eval, n - 2, torch.full_like(n, -1))
    return Split(train_end=torch.where(has_eval, n - 2, n), val_pos=val, test_pos=test)


def event_positions(data: SequenceData) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user, position)`` of every event, in event order (position 0 = the user's first event)."""
    user = torch.repeat_interleave(torch.arange(data.n_users), data.lengths)
    return user, torch.arange(data.items.numel()) - data.indptr[user]


def train_events(data: SequenceData, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user, item)`` of every training event (the events before each user's held-out ones)."""
    user, pos = event_positions(data)
    in_train = pos < split.train_end[user]
    return user[in_train], data.items[in_train]


def train_item_counts(data: SequenceData, split: Split) -> torch.Tensor:
    """Training-event count per item index: the popularity baseline and popularity sampler."""
    return torch.bincount(train_events(data, split)[1], minlength=data.n_items)


def history(
    data: SequenceData, users: torch.Tensor, pos: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Event indices of the ``max_len`` events before position ``pos`` of each user, left-padded.

    Returns ``(event_index (B, L), valid (B, L))``; invalid slots point at event 0 and must be masked.
    """
    offsets = pos.unsqueeze(1) - max_len + torch.arange(max_len).unsqueeze(0)  # (B, L)
    valid = offsets >= 0
    idx = data.indptr[users].unsqueeze(1) + offsets.clamp(min=0)
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def build_batch(
    data: SequenceData,
    users: torch.Tensor,
    pos: torch.Tensor,
    max_len: int,
    causal: bool = False,
    context: int = 0,
) -> Batch:
    """Features for predicting each user's event at ``pos`` from the events before it.

    Keys: every user-table feature, ``hist_item_ids`` (B, L) and ``hist_age`` (B, L, days before the
    prediction time), ``target`` (B,) item, every event-table feature (B,) of the prediction's moment
    (the target event's; with no target, the newest event's), and for causal models ``target_seq``
    (B, L): the item that follows each history slot (0 where the slot is padding, or among the first
    ``context`` slots, which only serve as history for the later ones: see :func:`training_examples`),
    with each event-table feature of that next event as ``<name>_seq`` (B, L).
    """
    ev, valid = history(data, users, pos, max_len)
    lengths = data.lengths[users]
    if bool((pos > lengths).any()) or bool((pos < 0).any()):
        raise ValueError("positions must lie in 0..len(user events)")
    # pos == len(events) asks for the next, unknown event: no target, "now" = the newest event time.
    has_target = pos < lengths
    target_ev = (data.indptr[users] + torch.minimum(pos, (lengths - 1).clamp(min=0))).clamp(max=data.items.numel() - 1)
    batch = {name: t[users] for name, t in data.user_table.items()}
    batch["hist_item_ids"] = torch.where(valid, data.items[ev], torch.zeros_like(ev))
    now = data.times[target_ev].unsqueeze(1)
    batch["hist_age"] = torch.where(valid, (now - data.times[ev]) / 86400.0, torch.zeros_like(now)).float()
    batch["target"] = torch.where(has_target, data.items[target_ev], torch.zeros_like(target_ev))
    for name, t in data.event_table.items():
        batch[name] = t[target_ev].long()
    if causal:
        nxt = torch.where(valid, ev + 1, torch.zeros_like(ev))
        is_target = valid & (torch.arange(max_len) >= context).unsqueeze(0)
        batch["target_seq"] = torch.where(is_target, data.items[nxt], torch.zeros_like(ev))
        for name, t in data.event_table.items():
            batch[f"{name}_seq"] = torch.where(is_target, t[nxt].long(), torch.zeros_like(ev))
    return batch


def item_batch(data: SequenceData, items: torch.Tensor | None = None) -> Batch:
    """Item-tower inputs for the given item indices (all items, padding row included, by default)."""
    if items is None:
        return dict(data.item_table)
    return {name: t[items] for name, t in data.item_table.items()}


def training_examples(
    data: SequenceData, split: Split, causal: bool, max_len: int, context: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, positions) of the training rows.

    Point models get one row per training event that has at least one earlier event. Causal models
    get windows of ``max_len`` slots cut from the end of each training sequence: the first
    ``context`` slots are history only and the other ``max_len - context`` predict their next event,
    so consecutive windows overlap by ``context`` and every training event after the first is
    predicted exactly once per epoch, each with at least ``context`` events of history in the row.
    """
    ends = split.train_end
    if not causal:
        lens = (ends - 1).clamp(min=0)
        users_t = torch.repeat_interleave(torch.arange(data.n_users), lens)
        starts = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        pos_t = torch.arange(int(lens.sum())) - starts + 1
        return users_t, pos_t
    stride = max_len - context
    if stride < 1:
        raise ValueError(f"max_len ({max_len}) must exceed the model's history context ({context})")
    last = (ends - 1).clamp(min=0)  # newest training event per user
    n_windows = (last + stride - 1) // stride  # windows ending at last, last - stride, … while ≥ 1
    users_t = torch.repeat_interleave(torch.arange(data.n_users), n_windows)
    k = torch.arange(int(n_windows.sum())) - torch.repeat_interleave(torch.cumsum(n_windows, 0) - n_windows, n_windows)
    return users_t, last[users_t] - k * stride


def n_targets(
    split: Split, causal: bool, users: torch.Tensor, positions: torch.Tensor, max_len: int, context: int = 0
) -> int:
    """Number of predicted targets in the given training rows (examples, for throughput)."""
    if not causal:
        return users.numel()
    return int(positions.clamp(max=max_len - context).sum())


def seen_before(data: SequenceData, users: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr, item indices) of the items each user interacted with before ``pos``."""
    lens = pos.clamp(min=0)
    indptr = torch.zeros(users.numel() + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(lens, 0)
    starts = torch.repeat_interleave(data.indptr[users], lens)
    offs = torch.arange(int(lens.sum())) - torch.repeat_interleave(indptr[:-1], lens)
    return indptr, data.items[starts + offs]
