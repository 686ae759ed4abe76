"""The training settings (:class:`TrainConfig`) and the names they accept: plain data, no torch, so that the
run configuration and its JSON schema load without the training stack."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TrainConfig:
    mode: str | int = "listwise"  # pointwise|pairwise|listwise|full, or 0|1|2
    negative: str = "popularity"  # uniform|popularity|inbatch|hard (ignored by mode "full")
    num_negatives: int = 100
    shared_negatives: bool = True  # one negative set per batch (fast) vs per row
    alpha: float = 0.75  # popularity sampler exponent
    logq: bool = True  # log-Q correction in list-wise mode
    margin: float = 0.0  # pair-wise mode: 0 = BPR, > 0 = triplet hinge with this margin (similarity units, before τ)
    # Hard negatives (negative "hard"; Huang et al. 2020): each row scores a pool of hard_pool items and
    # draws from the ranks hard_window = [lo, hi) (None: the top num_negatives), never the row's user's
    # training positives (unless hard_exclude_positives is false); hard_share of num_negatives are mined,
    # the rest drawn uniformly at random (EBR's blend of easy and hard negatives).
    hard_pool: int = 2048
    hard_window: tuple[int, int] | None = None
    hard_share: float = 1.0
    hard_exclude_positives: bool = True
    catalogue_tower_max: int = 20_000  # up to this many items, run the item tower on all of them per step
    # Above this many items mode "full" (a softmax over the whole catalogue: a batch × items logit matrix
    # per step) becomes a sampled softmax with log-Q-corrected popularity negatives; None: never.
    full_softmax_max_items: int | None = 100_000
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    dense_l2: float = 0.0
    grad_clip: float | None = 5.0
    patience: int = 3
    monitor: str = "ndcg@10"  # validation metric for early stopping
    restore_best: bool = True  # end with the best-validation weights (else the last epoch's)
    max_len: int = 50
    seed: int = 0
    device: str = "auto"
    # bf16 autocast on CUDA (no effect on CPU). Off by default: on an H200 it trained 9 of the 12 recipes
    # slower than fp32 (0.53-0.98x; these towers are too small for the matrix units to pay for the casts)
    # and cost YoutubeDNN a quarter of its Recall@20 (bf16 logits at temperature 0.05):
    # benchmarks/results/gpu.json, gpu_fp32.json.
    amp: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", resolve_mode(self.mode))
        if self.negative not in NEGATIVES:
            raise ValueError(f"unknown negative sampler {self.negative!r}; choose one of: {', '.join(NEGATIVES)}")
        if self.hard_window is not None:
            object.__setattr__(self, "hard_window", tuple(int(x) for x in self.hard_window))
            if len(self.hard_window) != 2 or not 0 <= self.hard_window[0] < self.hard_window[1]:
                raise ValueError(f"hard_window must be [lo, hi) ranks with 0 <= lo < hi, got {list(self.hard_window)}")
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"hard_share must lie in [0, 1], got {self.hard_share}")
        metric, _, k = self.monitor.partition("@")
        if metric not in ("recall", "ndcg") or not k.isdigit():
            raise ValueError(f"monitor must be recall@K or ndcg@K on validation data, got {self.monitor!r}")
