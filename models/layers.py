"""Shared building blocks: MLP and the causal transformer encoder used by sequence models."""

from __future__ import annotations

import torch
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
        allowed = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device)) & mask.unsqueeze(1)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)
        blocked = (~allowed).repeat_interleave(self.num_heads, 0)  # (B·heads, L, L)
        h = self.encoder(h, mask=blocked)
        return self.norm(h) * mask.unsqueeze(-1)
