"""Item refresh: catalogue items that appeared after training, served without retraining.

For a version whose item tower reads item attributes (DSSM, FaceBookDSSM and YoutubeSBC read decade
and genres besides the id), items it has never seen get vectors from its own item tower — their id is
unknown to it (index 0), so the vector comes from their attributes — and a new version is registered:
the same towers, vocabularies and feature spec, a Faiss index over the current catalogue (the items it
was trained on, the new ones, minus any withdrawn), the id map and the popularity fallback (new items:
0) to match. It is versioned like everything else (``refreshed_from``, the snapshot whose catalogue it
read; a retry returns the same version) and goes live by :func:`components.promote.swap`, which puts it
in the routing wherever its parent was; the service's hot reload swaps it in atomically.

The index is rebuilt from the item tower rather than edited in place: every index kind stays exact to
its configuration (HNSW's norm-completing coordinate depends on the largest item norm, which a new
item may change), and it costs one item-tower pass and one index build (``benchmarks/refresh.py``).

Models whose item tower reads only the item id (SASRec, GRU4Rec, MIND, …) cannot place an item they
never saw: refresh refuses them, saying so; their new items wait for the next training.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import index as idx
from .export import run_tower, session
from .registry import ModelVersion, Registry, VersionError
from .tower_inputs import TowerInputs

logger = logging.getLogger(__name__)

REBUILT = ("index.faiss", "item_ids.npy", "popularity.npy", "model.json")  # everything else is copied


class RefreshError(ValueError):
    """The version cannot be refreshed; the message says why and what to do instead."""


def attributes(mv: ModelVersion) -> list[str]:
    """The item-tower inputs other than the id: what places an item the version never saw."""
    return [i["name"] for i in mv.spec["item_inputs"] if i["name"] != "item_id"]


def withdrawn(mv: ModelVersion) -> list[int]:
    """Items withdrawn by this version's refreshes (they stay out of every later refresh)."""
    return list(mv.meta.get("withdrawn", []))


def plan(mv: ModelVersion, catalogue: pd.DataFrame, remove: list[int] | tuple[int, ...] = ()) -> dict[str, Any]:
    """Which items a refresh of ``mv`` over ``catalogue`` adds and withdraws (raw ids, sorted); items an
    earlier refresh withdrew are not added back."""
    known = set(mv.item_ids.tolist())
    gone = set(int(i) for i in remove)
    ids = catalogue.item_id.astype("int64")
    added = sorted(set(ids[~ids.isin(known)].tolist()) - gone - set(withdrawn(mv)))
    unknown = sorted(gone - known - set(ids.tolist()))
    if unknown:
        raise RefreshError(f"cannot withdraw items {unknown[:10]}: neither {mv.tag} nor the catalogue has them")
    return {"added": added, "removed": sorted(gone & known)}


def item_vectors(mv: ModelVersion, rows: pd.DataFrame, batch_size: int = 65536) -> np.ndarray:
    """Vectors of catalogue rows through the version's own item tower."""
    enc = TowerInputs(mv)
    sess = session(mv.path / "item_tower.onnx", threads=0)
    parts = [run_tower(sess, enc.encode_items(rows.iloc[i : i + batch_size])) for i in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, mv.dim), dtype=np.float32)


def refresh(
    mv: ModelVersion,
    catalogue: pd.DataFrame,
    registry: Registry,
    remove: list[int] | tuple[int, ...] = (),
    snapshot: str | None = None,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Registers ``mv`` over the current ``catalogue`` (raw rows: item_id and the attributes its item
    tower reads) with ``remove`` withdrawn. Returns the version to serve and the refresh record; ``mv``
    itself when nothing changes (status ``unchanged``)."""
    if not attributes(mv):
        raise RefreshError(
            f"{mv.tag}: its item tower reads only item ids, so an item it never saw has no vector; "
            "new items reach it with the next training"
        )
    todo = plan(mv, catalogue, remove)
    record: dict[str, Any] = {"parent": mv.tag, "snapshot": snapshot, "added": len(todo["added"]),
                              "removed": todo["removed"], "new_item_ids": todo["added"][:20]}  # fmt: skip
    if not todo["added"] and not todo["removed"]:
        return mv, record | {"status": "unchanged", "version": mv.tag}
    ids = mv.item_ids
    keep = ~np.isin(ids, todo["removed"])
    by_id = catalogue.drop_duplicates("item_id", keep="last").set_index("item_id")
    missing = sorted(set(ids[keep].tolist()) - set(by_id.index.tolist()))
    if missing:
        raise RefreshError(f"the catalogue lacks {len(missing)} items {mv.tag} serves (e.g. {missing[:5]})")
    new_ids = np.concatenate([ids[keep], np.asarray(todo["added"], dtype=np.int64)])
    digest = hashlib.sha256(np.asarray(new_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    key = f"refresh:{mv.tag}:{digest}"
    done = registry.find(mv.name, run_key=key)
    if done is not None:  # a retried refresh of the same catalogue
        return done, done.meta["refresh"] | {"status": "registered before", "version": done.tag}

    def fill(d: Path) -> dict[str, Any]:
        for p in mv.path.rglob("*"):
            rel = p.relative_to(mv.path)
            if p.is_file() and str(rel) not in REBUILT:
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, d / rel)
        t0 = time.perf_counter()
        vectors = item_vectors(mv, by_id.loc[new_ids].reset_index())
        cfg = idx.IndexConfig(**mv.meta["index"]["config"])
        index = idx.build(vectors, cfg)
        idx.write(index, d / "index.faiss")
        np.save(d / "item_ids.npy", new_ids)
        pop_path = mv.path / "popularity.npy"
        pop = np.load(pop_path)[keep] if pop_path.exists() else np.zeros(int(keep.sum()))
        np.save(d / "popularity.npy", np.concatenate([pop, np.zeros(len(todo["added"]), dtype=pop.dtype)]))
        seconds = time.perf_counter() - t0
        report = {**mv.meta["index"]["report"], "n_items": len(new_ids), "build_seconds": seconds,
                  "size_bytes": idx.size_bytes(index), "recall_measured_on": mv.tag}  # fmt: skip
        record.update(seconds=round(seconds, 3), items=len(new_ids))
        meta = {k: v for k, v in mv.meta.items() if k not in ("checksums", "run_key")}
        return meta | {"index": {**mv.meta["index"], "report": report}, "refreshed_from": mv.tag, "refresh": record,
                       "withdrawn": sorted(set(withdrawn(mv)) | set(todo["removed"]))}  # fmt: skip

    new = registry.write(mv.name, fill, key=key)
    record = new.meta["refresh"]
    logger.info("%s: %s with %d new and %d withdrawn items", mv.tag, new.tag, record["added"], len(record["removed"]))
    return new, record | {"status": "new", "version": new.tag}


def catalogue(features_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The latest published snapshot's manifest and its item catalogue."""
    from . import snapshots as sn

    latest = sn.latest(features_dir)
    if latest is None:
        raise FileNotFoundError(f"{features_dir} has no published snapshot: run `recall features run` first")
    return latest, pd.read_parquet(Path(latest["dir"]) / "items.parquet")


def refresh_served(
    routing_path: str | Path,
    registry: Registry,
    features_dir: str | Path,
    audit_log: str | Path,
    swap_in: bool = True,
) -> list[dict[str, Any]]:
    """Every version the routing serves, refreshed over the latest published snapshot's catalogue and
    (``swap_in``) swapped in where it is still served (what the ``recall_item_refresh`` DAG runs after each
    snapshot). Versions of ID-only models are reported with how many new items wait for their next
    training; a version that cannot be refreshed is reported (``failed``) without stopping the others."""
    from . import routing as rt
    from .promote import PromotionRefused, swap

    latest, items = catalogue(features_dir)
    out = []
    for tag in rt.load(routing_path).models():
        base = {"parent": tag, "version": tag, "added": 0, "removed": []}
        try:
            mv = registry.get(tag)
            if not attributes(mv):
                waiting = len(plan(mv, items)["added"])
                why = f"its item tower reads only item ids: {waiting} new item(s) wait for the next training"
                out.append(base | {"status": "waits for training", "why": why})
                continue
            new, record = refresh(mv, items, registry, snapshot=latest["id"])
            if swap_in and new.tag != mv.tag:
                swap(routing_path, tag, new.tag, audit_log, f"item refresh over snapshot {latest['id']}")
            out.append(record)
        except (RefreshError, PromotionRefused, VersionError) as e:
            logger.error("item refresh of %s failed: %s", tag, e)
            out.append(base | {"status": "failed", "why": str(e)})
    return out
