"""Export a trained model's towers to ONNX, parity-checked against PyTorch on real batches.

Each tower becomes one ONNX graph whose inputs are the named feature tensors the tower reads
(``model.user_inputs`` / ``model.item_inputs``, in that order) and whose output is ``user_embedding``
(``[B, d]`` or ``[B, K, d]``) or ``item_embedding`` (``[N, d]``). The batch axis is dynamic, and so
is the sequence axis of history inputs. The export writes, next to the graphs, everything a server
needs to turn raw feature values into those tensors: ``vocab/`` and ``feature_spec.json``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.base import Batch, RecallModel
from models.data import SequenceData, build_batch, item_batch
from models.features import DenseFeature, SequenceFeature
from models.schema import CONTEXT_FEATURES

from .datasets import Encoded

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
OPSET = 17
SEQUENCE_INPUTS = ("hist_item_ids", "hist_age")  # inputs with a (dynamic) sequence axis
# Where each user-tower input comes from in the feature store (see feature_repo/).
FEAST_SOURCES = {
    "user_id": "entity:user_id",
    "hist_item_ids": "user_behaviour:hist_item_ids",
    "hist_age": "user_behaviour:hist_timestamps (days before the request time)",
    **{n: f"context:{n} (of the request time)" for n in CONTEXT_FEATURES},
}


class ParityError(RuntimeError):
    """An exported tower disagrees with PyTorch by more than the tolerance."""


@dataclass(frozen=True)
class Parity:
    tower: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class _Tower(nn.Module):
    """Positional-argument adapter: ONNX graphs take a list of tensors, towers take a feature dict."""

    def __init__(self, model: RecallModel, which: str, names: list[str]):
        super().__init__()
        self.model, self.which, self.names = model, which, names

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, xs, strict=True))
        return self.model.user_tower(batch) if self.which == "user" else self.model.item_tower(batch)


def tower_inputs(model: RecallModel, which: str) -> list[str]:
    if which not in ("user", "item"):
        raise ValueError(f"tower must be 'user' or 'item', got {which!r}")
    return model.user_inputs if which == "user" else model.item_inputs


def export_tower(model: RecallModel, which: str, sample: Batch, path: str | Path, dynamic_seq: bool = True) -> Path:
    """Writes one tower as ONNX: batch axis dynamic; the sequence axis of history inputs too if asked."""
    names = tower_inputs(model, which)
    missing = [n for n in names if n not in sample]
    if missing:
        raise ValueError(f"sample batch lacks the {which} tower inputs {missing}")
    output = f"{which}_embedding"
    axes: dict[str, dict[int, str]] = {output: {0: "batch"}}
    for n in names:
        axes[n] = {0: "batch", 1: "seq"} if n in SEQUENCE_INPUTS and dynamic_seq else {0: "batch"}
    wrapper = _Tower(model.cpu(), which, names).eval()
    path = Path(path)
    with warnings.catch_warnings():  # (not under no_grad: that selects fused kernels ONNX lacks)
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        # The TorchScript-based exporter: it needs no onnxscript and handles every registered model.
        torch.onnx.export(
            wrapper,
            tuple(sample[n].cpu() for n in names),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
        )
    return path


def session(path: str | Path, threads: int = 1, quiet: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session (``threads=0``: onnxruntime's default, all cores)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4 if quiet else 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_tower(sess: ort.InferenceSession, batch: Batch | dict[str, np.ndarray]) -> np.ndarray:
    feeds = {}
    for inp in sess.get_inputs():
        x = batch[inp.name]
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        feeds[inp.name] = x.astype(np.float32 if inp.type == "tensor(float)" else np.int64, copy=False)
    return sess.run(None, feeds)[0]


@torch.no_grad()
def parity(model: RecallModel, which: str, sess: ort.InferenceSession, batches: list[Batch]) -> Parity:
    """Max |ONNX − PyTorch| over the given real batches."""
    was = model.training
    model.eval()
    worst = 0.0
    for b in batches:
        ref = (model.user_tower(b) if which == "user" else model.item_tower(b)).float().numpy()
        out = run_tower(sess, b)
        if out.shape != ref.shape:
            raise ParityError(f"{which} tower: ONNX output shape {out.shape} != PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()) if ref.size else 0.0)
    model.train(was)
    return Parity(which, tuple(len(next(iter(b.values()))) for b in batches), worst, PARITY_TOLERANCE)


def serving_batch(data: SequenceData, users: torch.Tensor, max_len: int) -> Batch:
    """What a server computes for these users: every event so far is history; the next one is unknown."""
    return build_batch(data, users, data.lengths[users], max_len)


def _input_spec(model: RecallModel, name: str, max_len: int, vocab: str | None, source: str) -> dict[str, Any]:
    f = model.bank.features.get(name)
    seq = name in SEQUENCE_INPUTS
    spec: dict[str, Any] = {
        "name": name,
        "dtype": "float32" if name == "hist_age" or isinstance(f, DenseFeature) else "int64",
        "shape": ["batch", max_len] if seq else ["batch"],
        "source": source,
    }
    if isinstance(f, SequenceFeature) and name not in SEQUENCE_INPUTS:  # multi-valued attribute (genres)
        spec["shape"] = ["batch", "n"]
    if seq:
        spec["padding"] = "left (oldest → newest, 0 = padding)"
    if vocab:
        spec["vocab"] = vocab
    return spec


def feature_spec(model: RecallModel, enc: Encoded, max_len: int) -> dict[str, Any]:
    """Which features the towers need, their order, dtypes, shapes, sources and vocabularies."""

    def vocab_of(name: str) -> str | None:
        f = model.bank.features.get(name)
        table = getattr(f, "table", name)
        if table == "item_id":
            return "vocab/item_id.npy"
        if table == "user_id":
            return "vocab/user_id.npy"
        return f"vocab/{table}.json" if table in enc.vocabs else None

    user = []
    for n in model.user_inputs:
        src = FEAST_SOURCES.get(n, f"user_profile:{n}")
        user.append(_input_spec(model, n, max_len, vocab_of(n), src))
    item = [_input_spec(model, n, max_len, vocab_of(n), f"item_features:{n}") for n in model.item_inputs]
    return {
        "model": model.name,
        "max_len": max_len,
        "multi_interest": model.multi_interest,
        "user_inputs": user,
        "item_inputs": item,
        "user_output": "user_embedding",
        "item_output": "item_embedding",
        "unknown_id": 0,
    }


def write_vocab(enc: Encoded, directory: Path) -> None:
    """Raw id ↔ index maps: ``user_id.npy`` / ``item_id.npy`` (raw id of index i; i = 0 is padding) and
    one JSON list per categorical feature (value of index i is entry i - 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "user_id.npy", np.asarray(enc.user_ids, dtype=np.int64))
    np.save(directory / "item_id.npy", np.asarray(enc.item_ids, dtype=np.int64))
    for name, values in enc.vocabs.items():
        (directory / f"{name}.json").write_text(json.dumps(values))


def export(
    model: RecallModel, enc: Encoded, max_len: int, out_dir: str | Path, parity_users: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Exports both towers into ``out_dir`` with vocab and feature spec; parity-checks each tower on real
    batches (1 and ``parity_users`` users, every item). Raises :class:`ParityError` on a mismatch.

    Returns the export record (input names, parity results) that goes into ``model.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    data = enc.data
    g = torch.Generator().manual_seed(seed)
    users = 1 + torch.randperm(data.n_users - 1, generator=g)[:parity_users]
    user_batches = [serving_batch(data, users[:1], max_len), serving_batch(data, users, max_len)]
    items = torch.arange(1, data.n_items)
    item_batches = [
        item_batch(data, items[:1]),
        *[item_batch(data, items[i : i + 65536]) for i in range(0, len(items), 65536)],
    ]

    record: dict[str, Any] = {"opset": OPSET, "parity": {}}
    record["dynamic_sequence_length"] = _export_user_tower(
        model, data, users, user_batches[-1], out / "user_tower.onnx"
    )
    for which, batches in (("user", user_batches), ("item", item_batches)):
        path = out / f"{which}_tower.onnx"
        if which == "item":
            export_tower(model, which, batches[-1], path)
        p = parity(model, which, session(path), batches)
        record["parity"][which] = p.to_dict()
        record[f"{which}_inputs"] = tower_inputs(model, which)
        logger.info("%s tower: max |onnx - torch| = %.2e over batches %s", which, p.max_abs_diff, p.batch_sizes)
        if not p.passed:
            raise ParityError(
                f"{which} tower of {model.name}: ONNX differs from PyTorch by {p.max_abs_diff:.3g} "
                f"(tolerance {p.tolerance:g}) on batches of {p.batch_sizes}"
            )
    write_probe(model, user_batches[-1], item_batches[-1], out / PROBE)
    write_vocab(enc, out / "vocab")
    spec = feature_spec(model, enc, max_len)
    for i in spec["user_inputs"]:
        if i["name"] in SEQUENCE_INPUTS:
            i["dynamic_length"] = record["dynamic_sequence_length"]
    (out / "feature_spec.json").write_text(json.dumps(spec, indent=2))
    return record


PROBE = "probe.npz"  # a few real inputs per tower and PyTorch's outputs for them
PROBE_ROWS = 8
PROBE_TOLERANCE = 1e-3  # max |ONNX − stored output|: far above float noise, far below any weight change


@torch.no_grad()
def write_probe(model: RecallModel, users: Batch, items: Batch, path: Path) -> None:
    """The first rows of a real user and item batch and PyTorch's tower outputs for them, so that loading
    a version can run its ONNX towers and catch weights changed after export (:func:`check_probe`)."""
    arrays: dict[str, np.ndarray] = {}
    for which, batch in (("user", users), ("item", items)):
        rows = {name: x[:PROBE_ROWS] for name, x in batch.items()}
        ref = model.user_tower(rows) if which == "user" else model.item_tower(rows)
        arrays |= {f"{which}/{name}": x.numpy() for name, x in rows.items()}
        arrays[f"{which}/__output__"] = ref.float().numpy()
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def check_probe(directory: Path) -> list[str]:
    """Runs both ONNX towers of an exported version on its probe inputs; a problem per tower whose
    outputs differ from the stored ones by more than :data:`PROBE_TOLERANCE`."""
    problems = []
    with np.load(directory / PROBE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for which in ("user", "item"):
        inputs = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{which}/") and "__" not in k}
        out = run_tower(session(directory / f"{which}_tower.onnx", quiet=True), inputs)
        ref = arrays[f"{which}/__output__"]
        diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
        if not diff <= PROBE_TOLERANCE:
            problems.append(f"{which}_tower.onnx: outputs on the export probe differ by {diff:.3g} "
                            f"(> {PROBE_TOLERANCE:g}): the weights changed after export")  # fmt: skip
    return problems


def _export_user_tower(model: RecallModel, data: SequenceData, users: torch.Tensor, sample: Batch, path: Path) -> bool:
    """Exports the user tower with a dynamic sequence axis if the traced graph really supports it
    (probed at a shorter length against PyTorch); otherwise with the fixed length ``max_len``.

    Returns whether the sequence axis is dynamic. (PyTorch's attention traces its sequence length
    as a constant, so SASRec's graph, for one, is fixed-length: serving pads to the spec's length anyway.)
    """
    max_len = sample["hist_item_ids"].size(1) if "hist_item_ids" in sample else 0
    export_tower(model, "user", sample, path, dynamic_seq=True)
    if not any(n in SEQUENCE_INPUTS for n in model.user_inputs) or max_len < 2:
        return False
    probe = serving_batch(data, users[:16], max(1, max_len // 2))
    try:
        if parity(model, "user", session(path, quiet=True), [probe]).passed:
            return True
    except Exception:  # noqa: BLE001 - onnxruntime rejects the shorter input: the axis is not dynamic
        pass
    export_tower(model, "user", sample, path, dynamic_seq=False)
    return False
