"""Shared building blocks: MLP and the causal transformer encoder used by sequence models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Linear → activation → dropout blocks; the last layer has no activation when ``output_layer``."""

    def __init__(
        self,
        input_dim: int,
        dims: list[int],
        dropout: float = 0.0,
        activation: str = "relu",
        output_layer: bool = True,
    ):
        super().__init__()
        if not dims:
            raise ValueError("MLP needs at least one layer in dims")
        layers: list[nn.Module] = []
        d_in = input_dim
        for i, d in enumerate(dims):
            layers.append(nn.Linear(d_in, d))
            if not (output_layer and i == len(dims) - 1):
                layers.append(globals()["activation"](activation))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            d_in = d
        self.net = nn.Sequential(*layers)
        self.output_dim = d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CausalTransformer(nn.Module):
    """Pre-LN transformer over a left-padded sequence; position i attends to positions ≤ i."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, hidden_size: int, dropout: float, max_len: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim {dim} must be divisible by num_heads {num_heads}")
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, hidden_size, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d) item embeddings, mask: (B, L) true at real items → (B, L, d)."""
        L = x.size(1)
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        # Positions count from the first real item of the window, so a query sees the same position
        # whether it sits mid-window in training or at the newest slot at serving time.
        pos = (torch.cumsum(mask.long(), 1) - 1).clamp(min=0)  # (B, L)
        h = self.drop(x * (x.size(-1) ** 0.5) + self.pos(pos))
        h = h * mask.unsqueeze(-1)
        # A query sees real items at or before it, never padding, so the amount of left padding
        # (which differs between a training window and a serving request) cannot change its output.
        # Padding queries see only themselves, which keeps every softmax row well defined.
        idx = torch.arange(L, device=x.device)
        allowed = causal_mask(mask) | (idx.unsqueeze(1) == idx.unsqueeze(0))
        blocked = (~allowed).repeat_interleave(self.num_heads, 0)  # (B·heads, L, L)
        h = self.encoder(h, mask=blocked)
        return self.norm(h) * mask.unsqueeze(-1)


# --- sequence helpers ------------------------------------------------------------------------------


def left_justify(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves the real items of left-padded rows to the front. x: (B, L, ...), mask: (B, L).

    Returns the shifted x and the index that undoes the shift (``restore``): recurrent encoders then
    read real items first, so their state at an item never depends on how much padding preceded it.
    """
    L = mask.size(1)
    n_pad = (~mask).sum(1, keepdim=True)  # (B, 1)
    src = (torch.arange(L, device=x.device).unsqueeze(0) + n_pad) % L  # slot read into position i
    restore = (torch.arange(L, device=x.device).unsqueeze(0) - n_pad) % L
    return _gather_time(x, src), restore


def _gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


class RecurrentEncoder(nn.Module):
    """GRU over a left-padded item sequence; output (B, L, hidden) is zero at padding slots."""

    def __init__(self, dim: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xj, restore = left_justify(self.drop(x), mask)
        h, _ = self.gru(xj)  # padding now sits after the real items, so it cannot reach them
        return _gather_time(h, restore) * mask.unsqueeze(-1)


def causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: query slot t may look at key slot j ≤ t that holds a real item."""
    idx = torch.arange(mask.size(1), device=mask.device)  # (comparisons, not tril/eye: exportable to ONNX)
    return (idx.unsqueeze(1) >= idx.unsqueeze(0)) & mask.unsqueeze(1)


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``allowed`` entries; rows with none allowed give zeros (not NaN)."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(logits, dim)
    return torch.nan_to_num(w, nan=0.0)


# --- multi-interest blocks ----------------------------------------------------------------------------


def squash(x: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Capsule squash: keeps the direction, maps the norm n to n² / (1 + n²) < 1."""
    sq = (x * x).sum(dim, keepdim=True)
    return x * (sq / (1.0 + sq)) / torch.sqrt(sq + eps)


class CapsuleRouting(nn.Module):
    """Behaviour-to-interest dynamic routing (MIND, ComiRec-DR).

    Low capsules are the history item embeddings (B, L, d); K high capsules (interests) come from
    ``iterations`` rounds of routing. Routing coefficients are a softmax over interests per item.

    ``shared=True`` (MIND): one bilinear map for every interest, so the starting logits must differ per
    (interest, item) or every interest would be the same vector: they are drawn from N(0, 1) per
    (interest, history slot) — afresh on every training step (as MIND's reference implementations do),
    and in eval mode taken from one fixed draw indexed by the slot's distance from the newest event
    (``max_len`` slots), so serving and the exported tower are deterministic. ``shared=False``
    (ComiRec-DR): one map per interest and zero starting logits.

    ``active`` (B, K): interests a user has (MIND's dynamic interest number); the others take no part
    in routing (their logits are −∞ in every round) and come out as zero vectors.
    """

    def __init__(
        self,
        dim: int,
        n_interest: int,
        iterations: int = 3,
        shared: bool = True,
        max_len: int = 256,
        per_slot: bool = False,
    ):
        super().__init__()
        self.K, self.iterations, self.shared, self.max_len = n_interest, iterations, shared, max_len
        if per_slot and shared:
            raise ValueError("per_slot maps are ComiRec-DR's (one map per interest); MIND's map is shared")
        self.per_slot = per_slot
        if shared:
            self.S = nn.Parameter(torch.randn(dim, dim) * dim**-0.5)
            self.register_buffer("eval_logits", torch.randn(n_interest, max_len))  # (K, slots from the newest)
        elif self.per_slot:
            self.S = nn.Parameter(torch.randn(max_len, n_interest, dim, dim) * dim**-0.5)  # (slot from newest, K, d, d)
        else:
            self.S = nn.Parameter(torch.randn(n_interest, dim, dim) * dim**-0.5)
        self.last_coupling: torch.Tensor | None = None  # (B, K, L), for inspection and tests

    def start_logits(self, B: int, L: int, device: torch.device) -> torch.Tensor:
        """(B, K, L) routing logits before the first round."""
        if not self.shared:
            return torch.zeros(B, self.K, L, device=device)
        if self.training:
            return torch.randn(B, self.K, L, device=device)
        if L > self.max_len:
            raise ValueError(f"history length {L} exceeds the routing's max_len {self.max_len}")
        return self.eval_logits[:, :L].flip(1).unsqueeze(0).expand(B, -1, -1)  # left-padded: newest last

    def forward(
        self,
        x: torch.Tensor | None,
        mask: torch.Tensor,
        ids: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, L, d) history embeddings, mask: (B, L) → interests (B, K, d).

        With the item ids (B, L) and their embedding table (N, d), ``x`` may be None (looked up only
        when needed); when the catalogue is no larger than the batch's history, the per-item
        predictions are computed once per catalogue item and looked up, which is the same value at a
        fraction of the cost.
        """
        B, L = mask.shape
        if x is None:
            if ids is None or table is None:
                raise ValueError("routing needs the history embeddings, or the ids and their table")
            if self.per_slot or table.size(0) > ids.numel():
                x = F.embedding(ids, table, padding_idx=0)
        # Predictions û of every item for every interest: shared map → (B, L, d), one per interest
        # → (B, K, L, d). The shared case never materialises K copies.
        if self.per_slot:
            if L > self.max_len:
                raise ValueError(f"history length {L} exceeds the routing's max_len {self.max_len}")
            u = torch.einsum("bld,lkde->bkle", x, self.S[:L].flip(0))  # left-padded: newest last
        elif x is None:  # the catalogue-wide maps, then a lookup (an embedding gather, not fancy indexing)
            if self.shared:
                u = F.embedding(ids, table @ self.S, padding_idx=0)
            else:
                d = table.size(1)
                maps = table @ self.S.permute(1, 0, 2).reshape(d, self.K * d)  # (N, K·d)
                u = F.embedding(ids, maps, padding_idx=0).view(B, L, self.K, d).transpose(1, 2)
        else:
            u = x @ self.S if self.shared else torch.einsum("bld,kde->bkle", x, self.S)
        pool, agree = ("bkl,bld->bkd", "bld,bkd->bkl") if self.shared else ("bkl,bkld->bkd", "bkld,bkd->bkl")
        b = self.start_logits(B, L, mask.device)  # (B, K, L)
        u_detached = u.detach()
        allowed = mask.unsqueeze(1).expand_as(b)
        if active is not None:
            allowed = allowed & active.unsqueeze(2)
            b = b.masked_fill(~active.unsqueeze(2), float("-inf"))
        for i in range(self.iterations):
            c = torch.softmax(b, dim=1) * allowed  # coupling: over interests, per item
            uu = u if i == self.iterations - 1 else u_detached
            v = squash(torch.einsum(pool, c, uu))  # (B, K, d)
            if i < self.iterations - 1:
                b = b + torch.einsum(agree, u_detached, v)
        self.last_coupling = c.detach()
        return v


class SelfAttentiveInterests(nn.Module):
    """ComiRec-SA: K attention heads over the history, A = softmax_L(W2 · tanh(W1 · H + b1)) → A · X (B, K, d).

    ``keys`` H (B, L, d) decide the weights (ComiRec adds the position embeddings there); ``values`` X
    are what the interests are made of (the item embeddings alone, as in ComiRec's code)."""

    def __init__(self, dim: int, n_interest: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, n_interest, bias=False)  # a bias per head shifts all its logits alike

    def forward(self, keys: torch.Tensor, mask: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        a = additive_attention(self.w1, self.w2, keys, mask)  # (B, L, K)
        return a.transpose(1, 2) @ (keys if values is None else values)  # (B, K, d)


def additive_attention(w1: nn.Linear, w2: nn.Linear, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the real slots t of W2 · tanh(W1 · h_t + b1): (B, L, d) → (B, L, heads), one softmax per
    head (ComiRec-SA's interests, SINE's pools).

    Computed as 2 · W2 · σ(2 · (W1 · h_t + b1)): tanh(z) = 2σ(2z) − 1, and the −1 adds the same constant
    to every slot's logit of a head, which the softmax over slots ignores; σ costs a third of tanh on CPU
    (torch 2.13, MKL). The hidden layer runs on real slots only (padding is often half of a batch)."""

    def scores(x: torch.Tensor) -> torch.Tensor:
        return 2 * w2(torch.sigmoid(2 * w1(x)))

    if mask.all() or torch.onnx.is_in_onnx_export():  # the exported tower keeps static shapes
        logits = scores(h)
    else:
        heads = w2.out_features
        slots = mask.unsqueeze(-1).expand(*mask.shape, heads)
        logits = h.new_zeros(*mask.shape, heads).masked_scatter(slots, scores(h[mask]))  # h[mask]: (b, l) order
    return masked_softmax(logits, mask.unsqueeze(-1).expand_as(logits), dim=1)


def label_aware(
    interests: torch.Tensor, target: torch.Tensor, power: float | None = None, active: torch.Tensor | None = None
) -> torch.Tensor:
    """Picks the interest for a training target. interests: (M, K, d), target: (M, d) → (M, d).

    ``power=None`` takes the interest with the highest score for the target (ComiRec, SINE); a number
    ``p`` gives MIND's label-aware attention, ``softmax(pow(scores, p))`` over interests (the paper's
    formula: with p = 1 a softmax of the scores; large p approaches the argmax; an even p also favours
    strongly negative scores, as written). ``active`` (M, K) restricts the choice to a user's interests.
    """
    scores = torch.einsum("mkd,md->mk", interests, target)
    if power is not None:
        scores = scores.pow(power)
    if active is not None:
        scores = scores.masked_fill(~active, float("-inf"))
    if power is None:
        idx = scores.argmax(1)
        return interests[torch.arange(interests.size(0), device=interests.device), idx]
    w = torch.softmax(scores, dim=1)
    return torch.einsum("mk,mkd->md", w, interests)
