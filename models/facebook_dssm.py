"""FaceBookDSSM, after Facebook's embedding-based retrieval (Huang et al., 2020): DSSM towers with
cosine similarity, trained with a triplet (margin) loss on hard and random negatives.

What is particular: deeper towers by default and the recipe in ``configs/facebook_dssm.yaml``
(pair-wise mode with ``train.margin`` > 0 is the triplet loss, with mined hard negatives).
"""

from __future__ import annotations

from typing import Any

from .dssm import DSSM
from .features import Feature

DEEP_TOWER = {"dims": [256, 128, 64], "dropout": 0.1, "activation": "relu"}


class FaceBookDSSM(DSSM):
    name = "facebook_dssm"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        temperature: float = 0.05,
        user_params: dict[str, Any] | None = None,
        item_params: dict[str, Any] | None = None,
        normalize: bool = True,
    ):
        super().__init__(
            user_features,
            item_features,
            temperature,
            {**DEEP_TOWER, **(user_params or {})},
            {**DEEP_TOWER, **(item_params or {})},
            normalize,
        )
