"""Training losses for every mode of the spec, on one shape convention.

Every mode sees ``pos (M,)`` logits of the positives and ``neg (M, n)`` logits of the negatives with a
``mask (M, n)`` that is False where a "negative" must not count (it equals the positive, or is
padding). Logits are scores already divided by the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("pointwise", "pairwise", "listwise", "full")
_MODE_INTS = {0: "pointwise", 1: "pairwise", 2: "listwise"}


def resolve_mode(mode: str | int) -> str:
    """Accepts a mode name or the spec's integers (0 point-wise, 1 pair-wise, 2 list-wise)."""
    if isinstance(mode, int) or (isinstance(mode, str) and mode.isdigit()):
        try:
            return _MODE_INTS[int(mode)]
        except KeyError:
            raise ValueError(f"unknown training mode {mode!r}; choose one of: 0, 1, 2, {', '.join(MODES)}") from None
    name = str(mode).lower().replace("-", "").replace("_", "")
    aliases = {"pointwise": "pointwise", "bce": "pointwise", "pairwise": "pairwise", "bpr": "pairwise",
               "listwise": "listwise", "softmax": "listwise", "full": "full", "fullsoftmax": "full"}
    if name not in aliases:
        raise ValueError(f"unknown training mode {mode!r}; choose one of: 0, 1, 2, {', '.join(MODES)}")
    return aliases[name]


def _masked_row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def pointwise_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: positives labelled 1, negatives 0; each row weighs its pos and negs equally."""
    return (F.softplus(-pos) + _masked_row_mean(F.softplus(neg), mask)).mean()


def pairwise_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BPR: mean of -log σ(pos - neg) over each row's valid negatives."""
    return _masked_row_mean(-F.logsigmoid(pos.unsqueeze(1) - neg), mask).mean()


def logq_correct(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Sampling-bias (log-Q) correction: subtract the log sampling probability of each item."""
    return logits - log_q


def listwise_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    mask: torch.Tensor,
    log_q_pos: torch.Tensor | None = None,
    log_q_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy over [positive, negatives]; optional log-Q correction of every logit."""
    if log_q_pos is not None:
        pos = logq_correct(pos, log_q_pos)
    if log_q_neg is not None:
        neg = logq_correct(neg, log_q_neg)
    if not bool(mask.all()):
        neg = neg.masked_fill(~mask, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def full_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the whole catalogue; column 0 (padding) is never a class."""
    logits = logits.clone()
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def inbatch_logits(
    pos_logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits an (M, M) query × in-batch-positive logit matrix into (pos, neg, mask).

    Column j is row j's positive; for row i it is a negative unless it is the same item as row i's
    own target (a duplicate in the batch), which would otherwise be penalised as a false negative.
    """
    pos = pos_logits.diagonal()
    mask = targets.unsqueeze(0) != targets.unsqueeze(1)
    return pos, pos_logits, mask


LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss, "listwise": listwise_loss}
