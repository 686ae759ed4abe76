"""YoutubeSBC (Yi et al., 2019): two towers trained with in-batch softmax whose logits are corrected
by the items' sampling probabilities, estimated on the fly by a streaming frequency estimator, so
the popularity bias of in-batch negatives is removed even on an unbounded stream of batches.

The towers are DSSM's (normalised, temperature-scaled); what is particular is the estimator, which
the trainer updates with every batch's positives and uses for the log-Q correction.
"""

from __future__ import annotations

from typing import Any

from .dssm import DSSM
from .features import Feature
from .samplers import StreamingFrequencyEstimator


class YoutubeSBC(DSSM):
    name = "youtube_sbc"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        temperature: float = 0.05,
        user_params: dict[str, Any] | None = None,
        item_params: dict[str, Any] | None = None,
        normalize: bool = True,
        estimator_buckets: int = 1 << 20,
        estimator_alpha: float = 0.01,
    ):
        super().__init__(user_features, item_features, temperature, user_params, item_params, normalize)
        self.frequency_estimator = StreamingFrequencyEstimator(estimator_buckets, estimator_alpha)
        self._remember(estimator_buckets=estimator_buckets, estimator_alpha=estimator_alpha)
