"""The training settings (:class:`TrainConfig`) and the names they accept: typed plain data, no torch, so
that the run configuration and its JSON schema load without the training stack."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

# Every settings class: frozen, typed and range-checked when built (from YAML, `-s key=value`, a checkpoint
# or code), unknown keys refused. pydantic's lax mode converts what YAML leaves as text ("1e-3" → 0.001).
settings = dataclass(frozen=True, config=ConfigDict(extra="forbid"))


def setting(description: str, **constraints: Any) -> Any:
    """A setting's description and range, for ``Annotated[type, setting(...)]`` (shown by `recall config
    schema`)."""
    return Field(description=description, **constraints)


MODES = ("pointwise", "pairwise", "listwise", "full")
_MODE_INTS = {0: "pointwise", 1: "pairwise", 2: "listwise"}
NEGATIVES = ("uniform", "popularity", "inbatch", "hard")


def resolve_mode(mode: str | int) -> str:
    """Accepts a mode name or the spec's integers (0 point-wise, 1 pair-wise, 2 list-wise)."""
    if isinstance(mode, int) or (isinstance(mode, str) and mode.isdigit()):
        try:
            return _MODE_INTS[int(mode)]
        except KeyError:
            raise ValueError(f"unknown training mode {mode!r}; choose one of: 0, 1, 2, {', '.join(MODES)}") from None
    name = str(mode).lower().replace("-", "").replace("_", "")
    aliases = {
        "pointwise": "pointwise",
        "bce": "pointwise",
        "pairwise": "pairwise",
        "bpr": "pairwise",
        "listwise": "listwise",
        "softmax": "listwise",
        "full": "full",
        "fullsoftmax": "full",
    }
    if name not in aliases:
        raise ValueError(f"unknown training mode {mode!r}; choose one of: 0, 1, 2, {', '.join(MODES)}")
    return aliases[name]


@settings
class TrainConfig:
    mode: Annotated[
        str | int,
        setting(
            "loss: pointwise | pairwise | listwise (sampled softmax) | full (softmax over the catalogue), or the "
            "spec's 0 | 1 | 2"
        ),
    ] = "listwise"
    negative: Annotated[
        Literal["uniform", "popularity", "inbatch", "hard"], setting("negative sampler (not used by mode full)")
    ] = "popularity"
    num_negatives: Annotated[int, setting("negatives per positive (or per batch when shared)", ge=1)] = 100
    shared_negatives: Annotated[bool, setting("one negative set per batch (fast) instead of per row")] = True
    alpha: Annotated[float, setting("popularity sampler exponent: count^alpha", ge=0)] = 0.75
    logq: Annotated[bool, setting("log-Q correction of sampled logits in list-wise mode")] = True
    margin: Annotated[
        float,
        setting("pair-wise mode: 0 = BPR, > 0 = triplet hinge with this margin (similarity units, before τ)", ge=0),
    ] = 0.0
    # Hard negatives (negative "hard"; Huang et al. 2020): each row scores a pool of hard_pool items and
    # draws from the ranks hard_window = [lo, hi) (None: the top num_negatives), never the row's user's
    # training positives (unless hard_exclude_positives is false); hard_share of num_negatives are mined,
    # the rest drawn uniformly at random (EBR's blend of easy and hard negatives).
    hard_pool: Annotated[int, setting("hard negatives: items scored per row to mine from", ge=1)] = 2048
    hard_window: Annotated[
        tuple[int, int] | None, setting("hard negatives: the ranks [lo, hi) drawn from (null: the top num_negatives)")
    ] = None
    hard_share: Annotated[float, setting("share of num_negatives mined hard, the rest uniform", ge=0, le=1)] = 1.0
    hard_exclude_positives: Annotated[bool, setting("hard negatives never include the user's positives")] = True
    catalogue_tower_max: Annotated[
        int, setting("up to this many items, run the item tower on all of them per step", ge=0)
    ] = 20_000
    full_softmax_max_items: Annotated[
        int | None, setting("above this many items mode full becomes a log-Q sampled softmax (null: never)", ge=1)
    ] = 100_000
    epochs: Annotated[int, setting("most epochs to train", ge=1)] = 20
    batch_size: Annotated[int, setting("examples per step", ge=1)] = 1024
    lr: Annotated[float, setting("Adam learning rate", gt=0)] = 1e-3
    weight_decay: Annotated[float, setting("Adam weight decay", ge=0)] = 0.0
    embedding_l2: Annotated[float, setting("L2 penalty on the embeddings used in a step", ge=0)] = 0.0
    dense_l2: Annotated[float, setting("L2 penalty on the dense (non-embedding) weights", ge=0)] = 0.0
    grad_clip: Annotated[float | None, setting("clip the gradient norm at this (null: no clipping)", gt=0)] = 5.0
    patience: Annotated[int, setting("stop after this many epochs without a better validation score", ge=1)] = 3
    monitor: Annotated[str, setting("validation metric for early stopping: recall@K or ndcg@K")] = "ndcg@10"
    restore_best: Annotated[bool, setting("end with the best-validation weights (else the last epoch's)")] = True
    max_len: Annotated[int, setting("events per training window (the longest history a model sees)", ge=2)] = 50
    seed: Annotated[int, setting("seed of weights, order and negatives", ge=0)] = 0
    device: Annotated[str, setting("auto | cpu | cuda | cuda:N", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")] = "auto"
    # bf16 autocast on CUDA (no effect on CPU). Off by default: on an H200 it trained 9 of the 12 recipes
    # slower than fp32 (0.53-0.98x; these towers are too small for the matrix units to pay for the casts)
    # and cost YoutubeDNN a quarter of its Recall@20 (bf16 logits at temperature 0.05):
    # benchmarks/results/gpu.json, gpu_fp32.json.
    amp: Annotated[bool, setting("bf16 autocast on CUDA (no effect on CPU)")] = False
    progress: Annotated[bool, setting("a progress bar on a terminal")] = True

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str | int) -> str:
        return resolve_mode(v)

    @field_validator("hard_window")
    @classmethod
    def _window(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"hard_window must be [lo, hi) ranks with 0 <= lo < hi, got {list(v)}")
        return v

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        metric, _, k = v.partition("@")
        if metric not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"monitor must be recall@K or ndcg@K on validation data, got {v!r}")
        return v
