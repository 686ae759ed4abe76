"""Data sources → the canonical tables, and canonical tables → the models' tensors.

Canonical tables (see docs/ARCHITECTURE.md): ``interactions`` (user_id, item_id, event_timestamp, rating),
``users`` (user_id, age_bucket, gender, occupation, zip_prefix, event_timestamp) and ``items``
(item_id, title, genres, year, event_timestamp).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from feature_repo.context import CONTEXT, context_values
from models.data import SequenceData
from models.schema import Schema

from .settings import SyntheticConfig

logger = logging.getLogger(__name__)

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
AGE_BUCKETS = [0, 18, 25, 35, 45, 50, 56, 200]
USER_CATEGORICAL = ["gender", "age_bucket", "occupation"]


@dataclass
class Tables:
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("interactions", "users", "items"):
            getattr(self, name).to_parquet(directory / f"{name}.parquet", index=False)
        return directory

    @classmethod
    def read(cls, directory: str | Path) -> Tables:
        directory = Path(directory)
        return cls(*(pd.read_parquet(directory / f"{n}.parquet") for n in ("interactions", "users", "items")))

    def fingerprint(self) -> str:
        """Content hash of the interactions: the split is reproducible from it."""
        h = hashlib.sha256()
        cols = self.interactions[["user_id", "item_id", "event_timestamp"]]
        h.update(pd.util.hash_pandas_object(cols, index=False).values.tobytes())
        return h.hexdigest()[:16]


def unix_seconds(ts: pd.Series) -> np.ndarray:
    """Unix seconds (float64) of a datetime column whatever its unit: parquet round-trips keep
    ``datetime64[us]``, whose raw integers are microseconds, not the nanoseconds of ``datetime64[ns]``."""
    t = pd.to_datetime(ts, utc=True)
    return (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _age_bucket(age: pd.Series) -> pd.Series:
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(AGE_BUCKETS[:-1], AGE_BUCKETS[1:], strict=True)]
    return pd.cut(age, AGE_BUCKETS, right=False, labels=labels).astype(str)


def ml100k_dir(path: str | None = None) -> Path:
    """The MovieLens-100K directory: ``path``, else ``$RECALL_ML100K_DIR``, else ``../shared/data/ml-100k``.

    An explicitly given directory (argument or environment) must hold the files: it never silently
    falls back to another copy.
    """
    explicit = path or os.environ.get("RECALL_ML100K_DIR")
    candidate = Path(explicit) if explicit else Path(__file__).resolve().parents[2] / "shared/data/ml-100k"
    missing = [f for f in ("u.data", "u.user", "u.item") if not (candidate / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"MovieLens-100K not found in {candidate} (missing {', '.join(missing)}); set RECALL_ML100K_DIR to "
            "the directory holding u.data, u.user and u.item"
        )
    return candidate


def load_ml100k(path: str | None = None) -> Tables:
    """Reads ``u.data``, ``u.user`` and ``u.item`` into the canonical tables (file order kept)."""
    d = ml100k_dir(path)
    inter = pd.read_csv(d / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"])
    inter = pd.DataFrame(
        {
            "user_id": inter.user_id.astype("int64"),
            "item_id": inter.item_id.astype("int64"),
            "event_timestamp": pd.to_datetime(inter.ts, unit="s", utc=True),
            "rating": inter.rating.astype("float64"),
        }
    )
    first_seen = inter.groupby("user_id").event_timestamp.min()
    u = pd.read_csv(d / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame(
        {
            "user_id": u.user_id.astype("int64"),
            "age_bucket": _age_bucket(u.age),
            "gender": u.gender.astype(str),
            "occupation": u.occupation.astype(str),
            "zip_prefix": u.zip.astype(str).str[:2],
        }
    )
    users["event_timestamp"] = users.user_id.map(first_seen).fillna(inter.event_timestamp.min())
    cols = ["item_id", "title", "release", "video_release", "url", *ML100K_GENRES]
    it = pd.read_csv(d / "u.item", sep="|", names=cols, encoding="latin-1")
    flags = it[ML100K_GENRES].to_numpy().astype(bool)
    year = pd.to_datetime(it.release, format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame(
        {
            "item_id": it.item_id.astype("int64"),
            "title": it.title.fillna("").astype(str),
            "genres": [[g for g, f in zip(ML100K_GENRES, row, strict=True) if f] for row in flags],
            "year": year.fillna(0).astype("int64"),
        }
    )
    items["event_timestamp"] = inter.event_timestamp.min()
    return Tables(inter, users, items)


_SYNTH_CHUNK = 20_000


def _simulate(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    home: np.ndarray,
    lengths: np.ndarray,
    first_user: int,
    members: list[np.ndarray],
    cum: list[np.ndarray],
    glob_cum: np.ndarray,
    user_start: np.ndarray,
) -> pd.DataFrame:
    """Event sequences of one chunk of users (see :func:`generate_synthetic`)."""
    n_users, C, n_items = len(home), cfg.n_clusters, cfg.n_items
    max_len = int(lengths.max() * 1.3) + 1  # oversample: repeats are dropped afterwards
    current = home.copy()
    events = np.full((n_users, max_len), -1, dtype=np.int64)
    for step in range(max_len):
        drift = rng.random(n_users) < cfg.p_drift
        jump = rng.random(n_users) < 0.5
        current = np.where(drift, np.where(jump, rng.integers(0, C, n_users), home), current)
        r = rng.random(n_users)
        popular = rng.random(n_users) < cfg.p_popular
        chosen = np.empty(n_users, dtype=np.int64)
        chosen[popular] = np.searchsorted(glob_cum, r[popular]).clip(max=n_items - 1)
        for c in range(C):
            sel = (~popular) & (current == c)
            chosen[sel] = members[c][np.searchsorted(cum[c], r[sel]).clip(max=len(members[c]) - 1)]
        events[:, step] = chosen
    local = np.repeat(np.arange(n_users), max_len)
    df = pd.DataFrame({"u": local, "item_id": events.ravel() + 1, "step": np.tile(np.arange(max_len), n_users)})
    df = df.drop_duplicates(["u", "item_id"], keep="first")
    df = df[df.groupby("u").cumcount().to_numpy() < lengths[df.u.to_numpy()]]
    gaps = rng.exponential(6 * 3600, len(df)).astype(np.int64) + 60
    ts = user_start[df.u.to_numpy()] + pd.Series(gaps).groupby(df.u.to_numpy()).cumsum().to_numpy()
    return pd.DataFrame(
        {
            "user_id": (df.u.to_numpy() + first_user + 1).astype(np.int64),
            "item_id": df.item_id.to_numpy(dtype=np.int64),
            "event_timestamp": pd.to_datetime(ts, unit="s", utc=True),
            "rating": rng.integers(1, 6, len(df)).astype(np.float64),
        }
    )


def generate_synthetic(cfg: SyntheticConfig = SyntheticConfig()) -> Tables:
    """Deterministic synthetic data with planted taste clusters, sequential drift and popularity skew.

    Each item belongs to one cluster (its genre). Each user has a home cluster and a current cluster:
    an event picks, popularity-weighted, an item of the current cluster (or, with ``p_popular``, any
    item); the current cluster drifts with ``p_drift`` (to a random cluster half the time, else back
    home). Repeated (user, item) pairs are dropped, so a user never interacts with an item twice.
    """
    if cfg.n_items < cfg.n_clusters or cfg.n_users < 1:
        raise ValueError(f"need n_items ≥ n_clusters ≥ 1 and n_users ≥ 1, got {cfg}")
    rng = np.random.default_rng(cfg.seed)
    n_items, n_users, C = cfg.n_items, cfg.n_users, cfg.n_clusters
    item_cluster = rng.permutation(np.arange(n_items) % C)
    pop = 1.0 / np.arange(1, n_items + 1) ** cfg.zipf
    pop = pop[rng.permutation(n_items)]
    # Per-cluster cumulative popularity tables for vectorised sampling.
    members = [np.flatnonzero(item_cluster == c) for c in range(C)]
    cum = [np.cumsum(pop[m]) / pop[m].sum() for m in members]
    glob_cum = np.cumsum(pop) / pop.sum()

    home = rng.integers(0, C, n_users)
    mean_len = cfg.n_interactions / n_users
    lengths = np.maximum(5, rng.lognormal(np.log(mean_len) - 0.3, 0.75, n_users).astype(int))
    lengths = np.minimum(lengths, n_items // 2)
    user_start = pd.Timestamp("2024-01-01", tz="UTC").value // 10**9 + rng.integers(0, 180 * 86400, n_users)
    # Users are simulated in chunks, each with its own stream seeded by (seed, first user of the chunk):
    # memory stays bounded (10M interactions fit in a few GB) and the result is deterministic.
    parts = []
    for lo in range(0, n_users, _SYNTH_CHUNK):
        hi = min(n_users, lo + _SYNTH_CHUNK)
        crng = np.random.default_rng([cfg.seed, lo])
        parts.append(_simulate(crng, cfg, home[lo:hi], lengths[lo:hi], lo, members, cum, glob_cum, user_start[lo:hi]))
    interactions = pd.concat(parts, ignore_index=True)
    occupations = [f"occ{i}" for i in range(C * 2)]
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "age_bucket": np.array(["18-24", "25-34", "35-44", "45-49", "50-55"])[rng.integers(0, 5, n_users)],
            "gender": np.where(rng.random(n_users) < 0.5, "F", "M"),
            # Occupation carries a noisy signal of the home cluster, as profiles do in real data.
            "occupation": [occupations[2 * h + int(b)] for h, b in zip(home, rng.random(n_users) < 0.5, strict=True)],
            "zip_prefix": [f"{z:02d}" for z in rng.integers(0, 100, n_users)],
            "home_cluster": home.astype(np.int64),
            "event_timestamp": pd.to_datetime(user_start, unit="s", utc=True),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "title": [f"item {i + 1}" for i in range(n_items)],
            "genres": [[f"genre{c}"] for c in item_cluster],
            "year": rng.integers(1980, 2025, n_items).astype(np.int64),
            "cluster": item_cluster.astype(np.int64),
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    return Tables(interactions, users, items)


@dataclass
class Encoded:
    """Tensors for the models plus the raw-id vocabularies (index 0 = padding/unknown)."""

    data: SequenceData
    schema: Schema
    user_ids: np.ndarray  # raw user id of index i is user_ids[i]; user_ids[0] = -1
    item_ids: np.ndarray
    vocabs: dict[str, list[str]]  # categorical feature → values; value of index i is vocab[i-1]


def _categorical(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    vocab = sorted(values.astype(str).unique().tolist())
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return values.astype(str).map(lookup).fillna(0).to_numpy(dtype=np.int64), vocab


MAX_GENRES = 6  # genres per item the item tower reads (left-padded with 0)


def decades(year: pd.Series) -> pd.Series:
    """The item tower's ``decade`` attribute: "1990" for 1990-1999, "0" for an unknown year."""
    return (year // 10 * 10).where(year > 0, 0).astype(str)


def encode(tables: Tables, max_len: int = 50, max_genres: int = MAX_GENRES) -> Encoded:
    """Canonical tables → :class:`SequenceData`, time-ordered per user (stable on equal timestamps)."""
    inter, users, items = tables.interactions, tables.users, tables.items
    for col in ("user_id", "item_id", "event_timestamp"):
        if inter[col].isna().any():
            raise ValueError(f"interactions.{col} has missing values")
    user_ids = np.union1d(users.user_id.to_numpy(), inter.user_id.unique())
    item_ids = np.union1d(items.item_id.to_numpy(), inter.item_id.unique())
    uidx = np.searchsorted(user_ids, inter.user_id.to_numpy()) + 1
    iidx = np.searchsorted(item_ids, inter.item_id.to_numpy()) + 1
    ts = unix_seconds(inter.event_timestamp)
    order = np.lexsort((ts, uidx))  # by user, then time; lexsort is stable, so ties keep file order
    uidx, iidx, ts = uidx[order], iidx[order], ts[order]
    U, N = len(user_ids) + 1, len(item_ids) + 1
    indptr = np.zeros(U + 1, dtype=np.int64)
    np.add.at(indptr, uidx + 1, 1)
    indptr = np.cumsum(indptr)

    vocabs: dict[str, list[str]] = {}
    user_table = {"user_id": torch.arange(U)}
    urows = np.searchsorted(user_ids, users.user_id.to_numpy()) + 1
    user_sparse: dict[str, int] = {}
    for col in USER_CATEGORICAL:
        if col in users:
            codes, vocab = _categorical(users[col])
            full = np.zeros(U, dtype=np.int64)
            full[urows] = codes
            user_table[col] = torch.from_numpy(full)
            vocabs[col] = vocab
            user_sparse[col] = len(vocab) + 1
    item_table = {"item_id": torch.arange(N)}
    irows = np.searchsorted(item_ids, items.item_id.to_numpy()) + 1
    codes, vocab = _categorical(decades(items.year))
    full = np.zeros(N, dtype=np.int64)
    full[irows] = codes
    item_table["decade"], vocabs["decade"] = torch.from_numpy(full), vocab
    genre_vocab = sorted({g for gs in items.genres for g in gs})
    glookup = {g: i + 1 for i, g in enumerate(genre_vocab)}
    genres = np.zeros((N, max_genres), dtype=np.int64)
    for row, gs in zip(irows, items.genres, strict=True):
        ids = [glookup[g] for g in list(gs)[:max_genres]]
        genres[row, max_genres - len(ids) :] = ids
    item_table["genres"], vocabs["genres"] = torch.from_numpy(genres), genre_vocab

    # The context of each event's moment, as Feast's on-demand view computes it for a request at that time.
    ctx = context_values(pd.Series(pd.to_datetime(ts, unit="s", utc=True)))
    data = SequenceData(
        indptr=torch.from_numpy(indptr),
        items=torch.from_numpy(iidx.astype(np.int64)),
        times=torch.from_numpy(ts.astype(np.float64)),
        user_table=user_table,
        item_table=item_table,
        event_table={n: torch.from_numpy(ctx[n].to_numpy(dtype=np.uint8) + 1) for n in CONTEXT},  # 1 byte/event
    )
    schema = Schema(
        n_users=U,
        n_items=N,
        user_sparse=user_sparse,
        item_sparse={"decade": len(vocabs["decade"]) + 1},
        item_multi={"genres": len(genre_vocab) + 1},
        max_len=max_len,
        context={n: size + 1 for n, size in CONTEXT.items()},
    )
    return Encoded(data, schema, np.concatenate([[-1], user_ids]), np.concatenate([[-1], item_ids]), vocabs)
