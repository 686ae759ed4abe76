"""Training losses for every mode of the spec, on one shape convention.

Every mode sees ``pos (M,)`` logits of the positives and ``neg (M, n)`` logits of the negatives with a
``mask (M, n)`` that is False where a "negative" must not count (it equals the positive, or is
padding). Logits are scores already divided by the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .settings import MODES, resolve_mode  # noqa: F401  (re-exported: the modes belong with the losses)


def _masked_row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def pointwise_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: positives labelled 1, negatives 0; each row weighs its pos and negs equally."""
    return (F.softplus(-pos) + _masked_row_mean(F.softplus(neg), mask)).mean()


def pairwise_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """BPR, mean of -log σ(pos - neg); with ``margin`` > 0 the triplet loss max(0, margin - pos + neg)."""
    diff = pos.unsqueeze(1) - neg
    per_pair = F.relu(margin - diff) if margin > 0 else -F.logsigmoid(diff)
    return _masked_row_mean(per_pair, mask).mean()


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
    # log(e^pos + Σ e^neg) without materialising the concatenated (M, 1+n) logits.
    return (torch.logaddexp(pos, torch.logsumexp(neg, dim=1)) - pos).mean()


def full_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the whole catalogue; column 0 (padding) is never a class."""
    logits = logits.clone()
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def inbatch_logits(pos_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits an (M, M) query × in-batch-positive logit matrix into (pos, neg, mask).

    Column j is row j's positive; for row i it is a negative unless it is the same item as row i's
    own target (a duplicate in the batch), which would otherwise be penalised as a false negative.
    """
    pos = pos_logits.diagonal()
    mask = targets.unsqueeze(0) != targets.unsqueeze(1)
    return pos, pos_logits, mask


LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss, "listwise": listwise_loss}


class _SharedSampledSoftmax(torch.autograd.Function):
    """Fused list-wise loss with one negative set shared by the batch (the hot path of sampled softmax).

    Same value and gradients as ``listwise_loss(rowdot(q, pos), q @ negᵀ, mask, …)`` with a per-item log-Q
    vector, but computes the (M, n) softmax in place and writes its gradient by hand, so the big
    logit matrix is touched a few times instead of a dozen.
    """

    @staticmethod
    def forward(ctx, q, pos_emb, neg_emb, hits_r, hits_c, pos_shift, neg_shift):  # type: ignore[override]
        pos = (q * pos_emb).sum(-1) - pos_shift  # (M,)
        logits = torch.addmm(neg_shift.unsqueeze(0), q, neg_emb.T, beta=-1.0)  # q·negᵀ - log q, (M, n)
        if hits_r.numel():
            logits[hits_r, hits_c] = float("-inf")  # accidental hits: a negative equal to the positive
        m = torch.maximum(logits.amax(1), pos)
        logits.sub_(m.unsqueeze(1)).exp_()
        e_pos = torch.exp(pos - m)
        z = logits.sum(1) + e_pos
        loss = (torch.log(z) + m - pos).mean()
        logits.div_(z.unsqueeze(1))  # now the softmax probabilities of the negatives
        ctx.save_for_backward(q, pos_emb, neg_emb, logits, e_pos / z)
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, pos_emb, neg_emb, probs, p_pos = ctx.saved_tensors
        scale = grad / q.size(0)
        d_logits = probs * scale  # (M, n)
        d_pos = (p_pos - 1.0) * scale  # (M,)
        d_q = torch.addmm(d_pos.unsqueeze(1) * pos_emb, d_logits, neg_emb)
        d_neg = d_logits.T @ q
        return d_q, d_pos.unsqueeze(1) * q, d_neg, None, None, None, None


def shared_sampled_softmax_loss(
    q: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    hits: tuple[torch.Tensor, torch.Tensor],
    log_q_pos: torch.Tensor | None = None,
    log_q_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """List-wise softmax loss of queries ``q (M, d)`` against their positives ``pos_emb (M, d)`` and a
    shared negative set ``neg_emb (n, d)``. ``hits`` = (rows, cols) of negatives equal to the row's
    positive, which are left out. Optional log-Q correction of positives (M,) and negatives (n,)."""
    zeros_m, zeros_n = q.new_zeros(q.size(0)), q.new_zeros(neg_emb.size(0))
    return _SharedSampledSoftmax.apply(
        q,
        pos_emb,
        neg_emb,
        hits[0],
        hits[1],
        zeros_m if log_q_pos is None else log_q_pos.to(q.dtype),
        zeros_n if log_q_neg is None else log_q_neg.to(q.dtype),
    )
