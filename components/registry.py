"""Model versions: the directory contract, atomic registration, verification, and the BentoML store.

A version is a directory ``<root>/<model>/<version>/`` holding::

    model.json         name, version, tag, created_at, code version, dataset fingerprint, config,
                       metrics, gate verdict, export parity, index report, and the sha256 of every file
    user_tower.onnx    named feature inputs → "user_embedding" [B, d] or [B, K, d]
    item_tower.onnx    item features → "item_embedding" [N, d]
    index.faiss        item vectors, row r for the raw item id item_ids.npy[r] (row r = item index r + 1,
                       except in a version refreshed with new or withdrawn items: components/refresh.py)
    popularity.npy     training interaction count per index row (the popularity fallback)
    vocab/             raw id ↔ index maps (0 = padding/unknown)
    feature_spec.json  the towers' inputs: order, dtypes, shapes, feature-store sources, vocabularies

Writing is atomic: everything goes into a hidden staging directory, ``model.json`` (with checksums)
last, then one ``rename`` makes the version visible. Loading verifies checksums and consistency and
refuses a broken version with every problem named.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

logger = logging.getLogger(__name__)

REQUIRED = ("user_tower.onnx", "item_tower.onnx", "index.faiss", "item_ids.npy", "feature_spec.json")
TAG_PREFIX = "recall-"
_VERSION = re.compile(r"^v(\d+)$")
DEFAULT_ROOT = "runs/registry"


class VersionError(ValueError):
    """A model version is incomplete or inconsistent; the message lists every problem found."""


def default_root() -> Path:
    return Path(os.environ.get("RECALL_REGISTRY", DEFAULT_ROOT))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != "model.json")


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``recall-sasrec:v3`` / ``sasrec:v3`` / ``sasrec`` (latest) → (model, version or None). Names are
    lower-case letters, digits and ``_``, versions ``v<N>``: nothing else, so a reference can never
    name a path outside the registry (``recall-../x:.`` is refused)."""
    name, _, version = str(ref).strip().partition(":")
    name = name.removeprefix(TAG_PREFIX)
    if not _NAME.fullmatch(name) or (version and not _VERSION.fullmatch(version)):
        raise ValueError(f"bad model reference {ref!r}; expected e.g. recall-sasrec:v3, sasrec:v3 or sasrec")
    return name, version or None


def canonical(ref: str) -> str | None:
    """The canonical tag ``recall-<model>:v<N>`` when ``ref`` names a version, None for the latest form."""
    name, version = parse_ref(ref)
    return None if version is None else f"{TAG_PREFIX}{name}:{version}"


@dataclass
class ModelVersion:
    """A verified model version directory (construct with :func:`load`)."""

    path: Path
    meta: dict[str, Any]
    spec: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.name}:{self.version}"

    @property
    def dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @cached_property
    def item_ids(self) -> np.ndarray:
        return np.load(self.path / "item_ids.npy")

    def index(self):
        from . import index as idx

        ix = idx.read(self.path / "index.faiss")
        idx.set_search_params(ix, idx.IndexConfig(**self.meta["index"]["config"]))
        return ix

    def user_session(self, threads: int = 1):
        from .export import session

        return session(self.path / "user_tower.onnx", threads)


def _onnx_io(path: Path) -> tuple[list[tuple[str, int, int]], list[Any]]:
    """Graph inputs as (name, elem_type, rank) and the output's shape dims (ints or symbolic names)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inputs = [(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim)) for i in g.input]
    out = g.output[0].type.tensor_type.shape.dim
    return inputs, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in out]


def verify(path: str | Path) -> list[str]:
    """Every problem with the version at ``path`` (empty list = sound)."""
    import onnx

    path = Path(path)
    problems: list[str] = []
    meta_path = path / "model.json"
    if not meta_path.is_file():
        return [f"{path}: model.json is missing (an incomplete or foreign directory)"]
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        return [f"{meta_path}: not valid JSON ({e})"]
    checksums: dict[str, str] = meta.get("checksums", {})
    for name in REQUIRED:
        if not (path / name).is_file():
            problems.append(f"{name} is missing")
    for name, digest in checksums.items():
        p = path / name
        if p.is_file() and sha256(p) != digest:
            problems.append(f"{name}: checksum mismatch (the file was truncated or modified after registration)")
        elif not p.is_file() and name not in REQUIRED:
            problems.append(f"{name} is missing")
    for name in REQUIRED:
        if (path / name).is_file() and name not in checksums:
            problems.append(f"{name} has no checksum in model.json")
    if problems:
        return problems

    # Structure: every key serving reads is there, so a version cannot fail later, at request time.
    try:
        spec = json.loads((path / "feature_spec.json").read_text())
    except json.JSONDecodeError as e:
        return [f"feature_spec.json: not valid JSON ({e})"]
    problems += _structure(meta, spec, path)
    if problems:
        return problems
    # Consistency: dimensions, counts and input names must agree across the files.
    dim = int(meta.get("embedding_dim", -1))
    for tower in ("user", "item"):
        f = path / f"{tower}_tower.onnx"
        try:
            onnx.checker.check_model(str(f))
            inputs, out_shape = _onnx_io(f)
        except Exception as e:  # noqa: BLE001 - any parse failure means an unusable graph
            problems.append(f"{f.name}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})")
            continue
        names = [n for n, _, _ in inputs]
        expected = [i["name"] for i in spec[f"{tower}_inputs"]]
        if names != expected:
            problems.append(f"{f.name}: inputs {names} do not match feature_spec.json {expected}")
        if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != dim:
            problems.append(f"{f.name}: output dimension {out_shape[-1]} != model.json embedding_dim {dim}")
    if not problems and (path / "probe.npz").is_file():  # (versions exported before probes: skipped)
        from .export import check_probe

        try:
            problems += check_probe(path)
        except Exception as e:  # noqa: BLE001 - a probe that cannot run is a version that cannot be trusted
            problems.append(f"probe.npz: the towers cannot run on it ({str(e).splitlines()[0][:200]})")
    from . import index as idx

    try:
        ix = idx.read(path / "index.faiss")
    except Exception as e:  # noqa: BLE001
        return [*problems, f"index.faiss: not a readable Faiss index ({str(e).splitlines()[0][:200]})"]
    if idx.dimension(ix) != dim:
        problems.append(f"index.faiss: dimension {idx.dimension(ix)} != user/item embedding dimension {dim}")
    try:
        ids = np.load(path / "item_ids.npy")
    except Exception as e:  # noqa: BLE001
        return [*problems, f"item_ids.npy: unreadable ({e})"]
    if len(ids) != ix.ntotal:
        problems.append(f"item_ids.npy maps {len(ids)} items but index.faiss holds {ix.ntotal}")
    if len(np.unique(ids)) != len(ids):
        problems.append("item_ids.npy has duplicate item ids")
    return problems


def _structure(meta: Any, spec: Any, path: Path) -> list[str]:
    """Missing or mistyped keys of model.json and feature_spec.json, and unreadable vocabularies."""
    if not isinstance(meta, dict):
        return ["model.json: not a JSON object"]
    if not isinstance(spec, dict):
        return ["feature_spec.json: not a JSON object"]
    problems = [f"model.json: missing {k!r}" for k in ("name", "version", "embedding_dim", "index") if k not in meta]
    index = meta.get("index")
    if "index" in meta and not (isinstance(index, dict) and isinstance(index.get("config"), dict)
                                and isinstance(index.get("report"), dict) and "kind" in index["report"]):  # fmt: skip
        problems.append("model.json: 'index' needs 'config' and 'report' with 'kind'")
    if "embedding_dim" in meta and (not isinstance(meta["embedding_dim"], int) or meta["embedding_dim"] < 1):
        problems.append(f"model.json: embedding_dim must be a positive integer, got {meta['embedding_dim']!r}")
    if not isinstance(spec.get("max_len"), int) or spec["max_len"] < 1:
        problems.append(f"feature_spec.json: max_len must be a positive integer, got {spec.get('max_len')!r}")
    for tower in ("user", "item"):
        inputs = spec.get(f"{tower}_inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) and "name" in i and "source" in i
                                                   for i in inputs):  # fmt: skip
            problems.append(f"feature_spec.json: {tower}_inputs must be a list of {{name, source, …}}")
            continue
    vocabs = {"vocab/item_id.npy", "vocab/user_id.npy"}  # always read (raw id → tower index)
    for tower in ("user", "item"):
        vocabs |= {i["vocab"] for i in spec.get(f"{tower}_inputs") or [] if isinstance(i, dict) and i.get("vocab")}
    for vocab in sorted(vocabs):
        f = path / str(vocab)
        if not f.resolve().is_relative_to(path.resolve()):
            problems.append(f"feature_spec.json: vocabulary {vocab!r} lies outside the version directory")
            continue
        try:
            values = json.loads(f.read_text()) if f.suffix == ".json" else np.load(f, allow_pickle=False)
            if len(values) == 0:
                raise ValueError("empty")
        except Exception as e:  # noqa: BLE001 - any failure means serving could not encode the input
            problems.append(f"{vocab}: unreadable vocabulary ({str(e).splitlines()[0][:200]})")
    return problems


def load(path: str | Path) -> ModelVersion:
    """Loads a version after :func:`verify`; raises :class:`VersionError` naming every problem."""
    path = Path(path)
    problems = verify(path)
    if problems:
        raise VersionError(f"refusing model version {path}: " + "; ".join(problems))
    return ModelVersion(
        path, json.loads((path / "model.json").read_text()), json.loads((path / "feature_spec.json").read_text())
    )


class Registry:
    """Versions under ``root/<model>/v<N>``; hidden ``.staging-*`` directories are never listed."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, model: str) -> list[str]:
        d = self.root / model
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self, model: str) -> str:
        versions = self.versions(model)
        return f"v{int(versions[-1][1:]) + 1 if versions else 1}"

    def path(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        if version is None:
            versions = self.versions(name)
            if not versions:
                known = ", ".join(self.models()) or "none"
                raise VersionError(f"no versions of {name!r} in {self.root} (models registered: {known})")
            version = versions[-1]
        p = self.root / name / version
        if not p.is_dir():
            raise VersionError(f"{TAG_PREFIX}{name}:{version} is not in {self.root}; have {self.versions(name)}")
        return p

    def get(self, ref: str) -> ModelVersion:
        """The verified version ``ref`` names; its model.json must name the directory it lies in (a copied
        version directory is refused, not served under the other version's tag)."""
        path = self.path(ref)
        mv = load(path)
        if (mv.name, mv.version) != (path.parent.name, path.name):
            raise VersionError(f"refusing model version {path}: model.json names {mv.tag}, not "
                               f"{TAG_PREFIX}{path.parent.name}:{path.name} (a copied directory?)")  # fmt: skip
        return mv

    def find(self, model: str, **fields: Any) -> ModelVersion | None:
        """The newest version of ``model`` whose model.json has all these values (e.g. ``run_key=…``), or None."""
        for v in reversed(self.versions(model)):
            meta = self.root / model / v / "model.json"
            if meta.is_file() and all(json.loads(meta.read_text()).get(k) == x for k, x in fields.items()):
                return load(meta.parent)
        return None

    def write(
        self, model: str, fill: Callable[[Path], dict[str, Any]], version: str | None = None, key: str | None = None
    ) -> ModelVersion:
        """Creates a version atomically. ``fill(staging_dir)`` writes the files and returns the metadata
        for ``model.json``; checksums, name, version and creation time are added here.

        ``key`` makes the write idempotent: a version already registered under the same key (a retried
        register step of the same run) is returned instead of a second one. Writers of one model hold
        an exclusive lock from choosing the number to the rename, so concurrent registrations get
        distinct versions, and a staging directory seen under the lock is a dead writer's and removed.
        """
        if version is not None and not _VERSION.match(version):
            raise ValueError(f"version must look like v<number>, got {version!r}")
        parent = self.root / model
        parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / f".{model}.lock"):
            for stale in parent.glob(".staging-*"):
                logger.warning("removing %s, left by a registration that died mid-write", stale)
                shutil.rmtree(stale, ignore_errors=True)
            if key is not None and (existing := self.find(model, run_key=key)) is not None:
                logger.info("%s is already registered for this run (key %s)", existing.tag, key)
                return existing
            version = version or self.next_version(model)
            final = parent / version
            if final.exists():
                raise VersionError(f"{TAG_PREFIX}{model}:{version} already exists in {self.root}")
            staging = parent / f".staging-{version}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                meta = fill(staging)
                meta = {
                    **meta,
                    "name": model,
                    "version": version,
                    "tag": f"{TAG_PREFIX}{model}:{version}",
                    "run_key": key,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "code_version": code_version(),
                    "checksums": {f: sha256(staging / f) for f in _files(staging)},
                }
                atomic_write_text(staging / "model.json", json.dumps(meta, indent=2, default=str))
                problems = verify(staging)
                if problems:
                    raise VersionError(f"the new version of {model} failed verification: " + "; ".join(problems))
                os.rename(staging, final)  # atomic: the version appears complete or not at all
                _fsync_dir(parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        logger.info("registered %s%s:%s at %s", TAG_PREFIX, model, version, final)
        return load(final)


@contextmanager
def file_lock(path: str | Path):
    """An exclusive advisory lock (flock) on ``path``, held for the ``with`` block; released by the
    kernel if the holder dies."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` so that readers see the old file or the new one, never a partial one: a temporary
    file in the same directory, fsync, rename, directory fsync."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the BentoML model store ------------------------------------------------------------------------
def save_to_bentoml(mv: ModelVersion) -> str:
    """Copies a verified version into the BentoML model store as ``recall-<model>:<version>``."""
    import bentoml

    labels = {"model": mv.name, "version": mv.version}
    meta = {
        k: mv.meta[k] for k in ("created_at", "code_version", "dataset_fingerprint", "embedding_dim") if k in mv.meta
    }
    try:
        existing = bentoml.models.get(mv.tag)
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None:
        if json.loads(Path(existing.path_of("model.json")).read_text()).get("checksums") == mv.meta["checksums"]:
            return mv.tag  # the same version is already there
        raise VersionError(f"{mv.tag} already exists in the BentoML store with different contents")
    with bentoml.models.create(mv.tag, labels=labels, metadata=meta) as bm:
        for f in [*_files(mv.path), "model.json"]:
            dst = Path(bm.path) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(mv.path / f, dst)
    return mv.tag


def load_from_bentoml(tag: str) -> ModelVersion:
    """Loads and verifies a version from the BentoML model store (``recall-sasrec:v3``)."""
    import bentoml

    name, version = parse_ref(tag)
    full = f"{TAG_PREFIX}{name}:{version}" if version else f"{TAG_PREFIX}{name}:latest"
    try:
        bm = bentoml.models.get(full)
    except bentoml.exceptions.NotFound:
        raise VersionError(f"{full} is not in the BentoML model store") from None
    return load(bm.path)
