"""YoutubeDNN (Covington et al., 2016): pooled watch history + profile → MLP user vector; the item
tower is the item-id embedding the history shares.

``pooling="mean"`` averages the last ``history_len`` watches; ``pooling="time_decay"`` weights each
by ``exp(-rate · age_in_days)`` with a learned rate, so recent watches count more. ``context=True``
adds the moment's context (hour, weekday, weekend, month; in training each target's own) to the
profile inputs of the MLP.

Training is causal: a row holds a window of consecutive events, every slot after the first
``history_len`` predicts its next event, and the sliding-window pools of all slots come from one
cumulative sum, so each event's embedding is looked up about twice per epoch instead of
``history_len`` times.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, RecallModel
from .features import Feature, pooled_lookup
from .layers import MLP
from .schema import CONTEXT_FEATURES, Schema

POOLINGS = ("mean", "time_decay")


class YoutubeDNN(RecallModel):
    name = "youtube_dnn"
    causal = True

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        temperature: float = 0.05,
        user_params: dict[str, Any] | None = None,
        pooling: str = "mean",
        decay_rate: float = 0.01,
        normalize: bool = True,
        history_len: int = 50,
    ):
        super().__init__(user_features, item_features, temperature)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        self.hist = self.sequence_feature()
        self.item_dim = self.bank.table_for(self.hist.name).embedding_dim
        params = {"dims": [128, self.item_dim], "dropout": 0.0, "activation": "relu", **(user_params or {})}
        others = [f.name for f in self.user_features if f.name != self.hist.name]
        # Per-row inputs first, then the moment's context, which differs per target in causal training.
        self.context = [n for n in others if n in CONTEXT_FEATURES]
        self.other_user = [n for n in others if n not in CONTEXT_FEATURES] + self.context
        self.user_mlp = MLP(self.bank.output_dim(self.other_user) + self.item_dim, **params)
        if self.user_mlp.output_dim != self.item_dim:
            raise ValueError(
                f"user tower ends in {self.user_mlp.output_dim} dims but items are {self.item_dim}-dim embeddings; "
                f"set user_params['dims'][-1] = {self.item_dim}"
            )
        self.pooling = pooling
        if pooling == "time_decay":
            # softplus⁻¹(decay_rate), so the learned rate starts at decay_rate and stays positive.
            self.decay = nn.Parameter(torch.tensor(math.log(math.expm1(decay_rate))))
        else:  # checkpoints written before mean pooling stopped holding an unused rate still load
            self._register_load_state_dict_pre_hook(lambda sd, prefix, *_: sd.pop(prefix + "decay", None))
        self.normalize = normalize
        self.history_len = history_len
        self._remember(
            user_params=params, pooling=pooling, decay_rate=decay_rate, normalize=normalize, history_len=history_len
        )

    @property
    def train_context(self) -> int:
        return self.history_len

    @property
    def user_inputs(self) -> list[str]:
        return self.user_feature_names + (["hist_age"] if self.pooling == "time_decay" else [])

    @classmethod
    def from_schema(cls, schema: Schema, embed_dim: int = 64, context: bool = False, **params: Any) -> YoutubeDNN:
        # Half of each causal training window is history for the other half (see models.data).
        params.setdefault("history_len", max(1, schema.max_len // 2))
        user = schema.user_profile(embed_dim) + (schema.context_features(embed_dim) if context else [])
        user += [schema.history(embed_dim, None)]
        return cls(user, [schema.item_id(embed_dim)], **params)

    def _weights(self, batch: Batch, ids: torch.Tensor) -> torch.Tensor | None:
        if self.pooling != "time_decay":
            return None
        return torch.exp(-F.softplus(self.decay) * batch["hist_age"][:, -ids.size(1) :].float())  # (B, L)

    def _pool(self, batch: Batch) -> torch.Tensor:
        ids = batch[self.hist.name][:, -self.history_len :]
        weight = self.bank.tables[self.hist.table].weight
        return pooled_lookup(weight, ids, "mean", self._weights(batch, ids))  # (B, d)

    def _sliding_pools(self, batch: Batch) -> torch.Tensor:
        """Pool of the ``history_len`` events up to and including each slot from ``history_len`` on:
        (B, L - history_len, d). Earlier slots are history only (see ``train_context``)."""
        ids = batch[self.hist.name]
        P = self.history_len
        e = self.bank.tables[self.hist.table](ids)  # (B, L, d)
        w = (ids > 0).to(e.dtype)
        decay = self._weights(batch, ids)
        if decay is not None:
            # exp(-r·(t_target - t_j)) = exp(-r·(t_target - t_ref)) · exp(-r·(t_ref - t_j)): the first
            # factor is shared by the whole window and cancels in the weighted mean.
            w = w * decay.to(e.dtype)
            e = e * w.unsqueeze(-1)
        # (Mean pooling needs no weighting: the padding row of the table is zero and stays zero.)
        cs = torch.cumsum(e, 1)  # (B, L, d)
        cw = torch.cumsum(w, 1)
        # Slot i pools slots i-P+1..i: cs[i] - cs[i-P], with slices instead of gathers (cheaper backward).
        num = cs[:, P:] - cs[:, :-P]
        den = cw[:, P:] - cw[:, :-P]
        return num / den.clamp(min=1e-6).unsqueeze(-1)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def _query(self, pooled: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.other_user:
            pooled = torch.cat([self.bank.concat(batch, self.other_user), pooled], -1)
        return self._out(self.user_mlp(pooled))

    def user_tower(self, batch: Batch) -> torch.Tensor:
        return self._query(self._pool(batch), batch)  # (B, d)

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pools = self._sliding_pools(batch)  # (B, L-P, d)
        tgt = batch["target_seq"][:, self.history_len :].reshape(-1)  # only these slots are targets
        flat = (tgt > 0).nonzero(as_tuple=True)[0]  # index_select trains faster than boolean masks
        pools = pools.reshape(-1, pools.size(-1)).index_select(0, flat)
        rows = flat // (batch["target_seq"].size(1) - self.history_len)
        if not self.other_user:
            return self._query(pools, batch), tgt.index_select(0, flat)
        # First layer split as W·[profile; context; pool] = W_p·profile + W_c·context + W_h·pool: the
        # profile part runs once per row (B) instead of once per target (M), the context part per target
        # (each has its own moment), and the (M, p + c + d) concatenation disappears.
        first = self.user_mlp.net[0]
        static = self.other_user[: len(self.other_user) - len(self.context)]
        p, c = self.bank.output_dim(static), self.bank.output_dim(self.context)
        h = F.linear(pools, first.weight[:, p + c :], first.bias)
        if static:
            h = h + F.linear(self.bank.concat(batch, static), first.weight[:, :p]).index_select(0, rows)
        if self.context:
            P = self.history_len
            per_target = {n: batch[f"{n}_seq"][:, P:].reshape(-1).index_select(0, flat) for n in self.context}
            h = h + F.linear(self.bank.concat(per_target, self.context), first.weight[:, p : p + c])
        return self._out(self.user_mlp.net[1:](h)), tgt.index_select(0, flat)  # (M, d), (M,)

    def item_tower(self, batch: Batch) -> torch.Tensor:
        return self._out(self.bank.embed("item_id", batch["item_id"]))  # (N, d)
