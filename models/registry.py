"""The one registry of recall models, and checkpoint save/load.

A checkpoint directory holds ``model.pt`` (weights) and ``config.json`` (the model's registry name
and constructor arguments, plus whatever the caller adds), so a model is rebuilt from the files alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import RecallModel
from .comirec import ComirecDR, ComirecSA
from .dssm import DSSM
from .facebook_dssm import FaceBookDSSM
from .gru4rec import GRU4Rec
from .mind import MIND
from .narm import NARM
from .sasrec import SASRec
from .schema import Schema
from .sine import SINE
from .stamp import STAMP
from .youtube_dnn import YoutubeDNN
from .youtube_sbc import YoutubeSBC

MODELS: dict[str, type[RecallModel]] = {
    "dssm": DSSM,
    "facebook_dssm": FaceBookDSSM,
    "youtube_dnn": YoutubeDNN,
    "youtube_sbc": YoutubeSBC,
    "mind": MIND,
    "gru4rec": GRU4Rec,
    "narm": NARM,
    "sasrec": SASRec,
    "sine": SINE,
    "stamp": STAMP,
    "comirec_dr": ComirecDR,
    "comirec_sa": ComirecSA,
}


def get_model_class(name: str) -> type[RecallModel]:
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[key]


def build_model(name: str, schema: Schema, **params: Any) -> RecallModel:
    """Builds a registered model with default feature specs for ``schema``."""
    return get_model_class(name).from_schema(schema, **params)  # type: ignore[attr-defined]


def model_from_config(config: dict[str, Any]) -> RecallModel:
    cls = get_model_class(config["model"])
    return cls(**RecallModel.features_from_config(config["params"]))


def save_checkpoint(model: RecallModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Writes ``model.pt`` and ``config.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = directory / "model.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / "model.pt")
    tmp = directory / "config.json.tmp"  # never half a file, whenever the process dies
    tmp.write_text(json.dumps({**model.config(), **(extra or {})}, indent=2, default=str))
    tmp.replace(directory / "config.json")
    return directory


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[RecallModel, dict[str, Any]]:
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = model_from_config(config)
    model.load_state_dict(torch.load(directory / "model.pt", map_location=map_location, weights_only=True))
    model.eval()
    return model, config
