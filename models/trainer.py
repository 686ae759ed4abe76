"""MatchTrainer: one training loop for every model and every loss mode / negative sampler."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .base import RecallModel, score_pairs
from .data import (
    SequenceData,
    Split,
    build_batch,
    item_batch,
    n_targets,
    train_events,
    train_item_counts,
    training_examples,
)
from .evaluation import evaluate_model, item_embeddings, user_embeddings
from .losses import (
    full_softmax_loss,
    inbatch_logits,
    listwise_loss,
    pairwise_loss,
    pointwise_loss,
    shared_sampled_softmax_loss,
)
from .registry import save_checkpoint
from .samplers import HardNegativeSampler, PopularitySampler, UniformSampler, user_positives
from .settings import TrainConfig

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("recall.progress")  # the CLI shows it at INFO without --verbose


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Heartbeat:
    """Progress for logs, where a progress bar cannot draw (output not on a terminal: a scheduler, a pod,
    a redirect): after the first ``first`` seconds of a run, then every ``every`` seconds, one line with
    the step, examples/s and the time left in the epoch — and, on the first line, what the whole run may
    take at most (every epoch, no early stop)."""

    def __init__(self, epochs: int, first: float = 10.0, every: float = 60.0):
        self.epochs, self.first, self.every = epochs, first, every
        self.warned = False

    def start(self, epoch: int, steps: int, examples_per_step: int) -> None:
        self.epoch, self.steps, self.per_step = epoch, steps, examples_per_step
        self.t0 = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        wait = self.every if self.warned else self.first
        if now - self.last < wait:
            return
        self.last = now
        rate = done / (now - self.t0)  # steps/s
        left = (self.steps - done) / rate
        line = (f"epoch {self.epoch}/{self.epochs}: step {done:,}/{self.steps:,}, "
                f"{rate * self.per_step:,.0f} examples/s, epoch ends in {_duration(left)}")  # fmt: skip
        if not self.warned:
            line += f"; at most {_duration(self.steps / rate * (self.epochs - self.epoch + 1))} more for the run"
            self.warned = True
        progress_log.info(line)


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    val_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples: int = 0  # predicted targets seen in training

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Loss(nn.Module):
    """The training loss as a module, for DistributedDataParallel to wrap: it averages the gradients of
    the wrapped parameters across ranks on the backward pass of what ``forward`` returned."""

    def __init__(self, trainer: MatchTrainer):
        super().__init__()
        self.model = trainer.model
        self.trainer = trainer  # not a module: not registered

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trainer.loss(batch)


class MatchTrainer:
    """Trains a recall model on the training part of a leave-last-out split.

    Early stopping and best-checkpoint selection use the validation events only; the test events are
    never looked at here.

    Under ``torchrun`` (:mod:`models.distributed`) the same loop is data-parallel: every rank draws the
    same shuffled order and the same negatives (one generator, one seed), takes every ``world``-th row of
    each batch of ``batch_size`` — so the global batch, and the learning rate tuned for it, stay as in a
    single process — and DistributedDataParallel averages the gradients. Shared sampled negatives are
    therefore shared by the whole global batch; in-batch negatives are per rank (a rank's rows are each
    other's negatives); the streaming frequency estimator sees every rank's targets. Rank 0 evaluates,
    decides early stopping and writes checkpoints.
    """

    def __init__(self, model: RecallModel, config: TrainConfig, data: SequenceData, split: Split):
        cap = config.full_softmax_max_items
        if config.mode == "full" and cap is not None and data.n_items > cap:
            negative = config.negative if config.negative != "hard" else "popularity"
            logger.warning(
                "%d items > train.full_softmax_max_items=%d: training with a sampled softmax (%d %s negatives, "
                "log-Q corrected) instead of a full softmax; set train.full_softmax_max_items=null to keep it",
                data.n_items, cap, config.num_negatives, negative,
            )  # fmt: skip
            config = dataclasses.replace(config, mode="listwise", negative=negative, logq=True)
        self.config = config
        self.world = distributed.world()
        self.heartbeat = Heartbeat(config.epochs)
        self.device = distributed.rank_device(resolve_device(config.device))
        self.model = model.to(self.device)
        self.data, self.split = data, split
        self.gen = torch.Generator().manual_seed(config.seed)
        model_max = getattr(model, "max_len", None) or getattr(getattr(model, "encoder", None), "max_len", None)
        if model_max is not None and config.max_len > model_max:
            raise ValueError(f"max_len {config.max_len} exceeds the model's max_len {model_max}")
        counts = train_item_counts(data, split)
        self.row_gen: torch.Generator | None = None  # the hard sampler's per-row draws
        self.log_q_freq = torch.log((counts.float() / counts.sum()).clamp(min=1e-12)).to(self.device)
        if config.negative == "uniform":
            self.sampler = UniformSampler(data.n_items, self.gen)
        elif config.negative == "popularity":
            self.sampler = PopularitySampler(counts, config.alpha, self.gen)
        elif config.negative == "hard":
            # Row-level draws (which ranks of the window, the random share) differ in size between DDP
            # ranks: their own stream, so the shared generator stays in step on every rank.
            self.row_gen = torch.Generator().manual_seed(config.seed * 7919 + self.world.rank + 1)
            positives = None
            if config.hard_exclude_positives:
                indptr, items = user_positives(*train_events(data, split), data.n_users)
                positives = (indptr.to(self.device), items.to(self.device))
            self.sampler = HardNegativeSampler(data.n_items, config.hard_pool, self.gen, config.hard_window,
                                               positives, self.row_gen)  # fmt: skip
            self.easy = UniformSampler(data.n_items, self.row_gen)
        else:
            self.sampler = None
        self.items_all = {k: v.to(self.device) for k, v in item_batch(data).items()}
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.amp = config.amp and self.device.type == "cuda"
        self._catalogue: torch.Tensor | None = None
        self._step_loss = self.loss
        if self.world.size > 1:
            self._step_loss = DistributedDataParallel(
                _Loss(self), device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # --- loss ----------------------------------------------------------------------------------
    def _items(self, idx: torch.Tensor) -> torch.Tensor:
        if self._catalogue is not None:
            return self._catalogue[idx]
        return self.model.item_tower({k: v[idx] for k, v in self.items_all.items()})

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, model = self.config, self.model
        q, tgt = model.train_queries(batch)
        # Small catalogues: one item-tower pass over every item per step, then gathers, is cheaper
        # than separate passes for positives and negatives (one embedding backward instead of several).
        self._catalogue = model.item_tower(self.items_all) if self.data.n_items <= cfg.catalogue_tower_max else None
        # Scores are linear in the query (and max over interests commutes with a positive scale), so
        # dividing the queries by τ is dividing every score by τ, on (M, d) instead of (M, n).
        q = q / model.temperature
        if cfg.mode == "full":
            items = self._catalogue if self._catalogue is not None else model.item_tower(self.items_all)
            return full_softmax_loss(model.score(q, items), tgt)
        pos_emb = self._items(tgt)
        if cfg.negative == "inbatch":
            pos, neg, mask = inbatch_logits(model.score(q, pos_emb), tgt)
            if cfg.mode == "listwise":
                lq = None
                estimator = getattr(model, "frequency_estimator", None)
                if cfg.logq and estimator is not None:  # streaming estimate (YoutubeSBC)
                    if model.training:
                        estimator.update(distributed.gather(tgt))
                    lq = estimator.log_q(tgt).to(q.device)
                elif cfg.logq:
                    lq = self.log_q_freq[tgt]
                return listwise_loss(pos, neg, mask, lq, lq.unsqueeze(0) if lq is not None else None)
            return self._pair_or_point(pos, neg, mask)
        n = cfg.num_negatives
        fused = cfg.shared_negatives and cfg.mode == "listwise" and q.dim() == 2 and not self.amp
        if fused and cfg.negative != "hard":
            neg_ids = self.sampler.draw_shared(n).to(self.device)  # collisions: `hits` below
            use_q = cfg.logq and cfg.negative != "uniform"
            if use_q:
                hits = (neg_ids.unsqueeze(0) == tgt.unsqueeze(1)).nonzero(as_tuple=True)
            else:
                # Without log-Q, duplicate negatives carry no meaning: keep each once, then find the
                # accidental hits through an item → column table in O(M) instead of an (M, n) compare.
                neg_ids = torch.unique(neg_ids)
                col = torch.full((self.data.n_items,), -1, dtype=torch.long, device=self.device)
                col[neg_ids] = torch.arange(neg_ids.numel(), device=self.device)
                hit_col = col[tgt]
                hit_rows = (hit_col >= 0).nonzero(as_tuple=True)[0]
                hits = (hit_rows, hit_col[hit_rows])
            log_q = self.sampler.log_q.to(self.device)
            return shared_sampled_softmax_loss(
                q,
                pos_emb,
                self._items(neg_ids),
                hits,
                log_q[tgt] if use_q else None,
                log_q[neg_ids] if use_q else None,
            )
        pos = score_pairs(q, pos_emb)
        log_q_neg = None
        if cfg.negative == "hard":
            neg_ids, mask = self._hard_negatives(q.detach(), tgt, batch)
            neg = score_pairs(q, self._items(neg_ids.flatten()).view(*neg_ids.shape, -1))
        elif cfg.shared_negatives:
            neg_ids, mask = self.sampler.sample_shared(tgt.cpu(), n)
            neg_ids, mask = neg_ids.to(self.device), mask.to(self.device)
            neg = model.score(q, self._items(neg_ids))
            log_q_neg = self.sampler.log_q.to(self.device)[neg_ids].unsqueeze(0)
        else:
            neg_ids = self.sampler.sample(tgt.cpu(), n).to(self.device)
            neg = score_pairs(q, self._items(neg_ids.flatten()).view(*neg_ids.shape, -1))
            mask = torch.ones_like(neg, dtype=torch.bool)
            log_q_neg = self.sampler.log_q.to(self.device)[neg_ids]
        if cfg.mode == "listwise":
            # Uniform sampling shifts every logit by the same log q: the correction is a no-op.
            use_q = cfg.logq and log_q_neg is not None and cfg.negative != "uniform"
            lq_pos = self.sampler.log_q.to(self.device)[tgt] if use_q else None
            return listwise_loss(pos, neg, mask, lq_pos, log_q_neg if use_q else None)
        return self._pair_or_point(pos, neg, mask)

    def _hard_negatives(self, q: torch.Tensor, tgt: torch.Tensor, batch: dict[str, torch.Tensor]):
        """(M, num_negatives) negatives and their validity: ``hard_share`` mined, the rest uniform."""
        cfg = self.config
        n_hard = round(cfg.num_negatives * cfg.hard_share)
        users = batch["user_id"]
        if users.numel() != tgt.numel():  # causal: one row per predicted slot
            users = users.unsqueeze(1).expand_as(batch["target_seq"])[batch["target_seq"] > 0]
        parts, masks = [], []
        if n_hard:
            hard, ok = self.sampler.sample(tgt, n_hard, lambda pool: self.model.score(q, self._items(pool)), users)
            parts.append(hard)
            masks.append(ok)
        if cfg.num_negatives - n_hard:
            easy = self.easy.sample(tgt.cpu(), cfg.num_negatives - n_hard).to(self.device)
            parts.append(easy)
            masks.append(torch.ones_like(easy, dtype=torch.bool))
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def _pair_or_point(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.mode == "pairwise":
            if self.config.margin > 0:  # the triplet loss: its margin is in similarity units (cosine), before τ
                t = self.model.temperature
                return pairwise_loss(pos * t, neg * t, mask, self.config.margin)
            return pairwise_loss(pos, neg, mask)
        return pointwise_loss(pos, neg, mask)

    def regularization(self) -> torch.Tensor:
        cfg = self.config
        aux = self.model.aux_loss()
        reg = torch.zeros((), device=self.device) if aux is None else aux
        if cfg.embedding_l2 > 0:
            reg = reg + cfg.embedding_l2 * sum(e.weight.pow(2).sum() for e in self.model.bank.tables.values())
        if cfg.dense_l2 > 0:
            emb = {id(e.weight) for e in self.model.bank.tables.values()}
            dense = [p for p in self.model.parameters() if p.dim() >= 2 and id(p) not in emb]
            reg = reg + cfg.dense_l2 * sum(p.pow(2).sum() for p in dense)
        return reg

    # --- loop ----------------------------------------------------------------------------------
    def train_epoch(self, users: torch.Tensor, positions: torch.Tensor, epoch: int = 1) -> tuple[float, int]:
        """One pass over the training examples (``training_examples``) in a fresh random order; returns
        the summed loss (over ranks) and the number of steps. A non-finite loss stops training with an
        error."""
        cfg, model, w = self.config, self.model, self.world
        ctx = model.train_context
        model.train()
        perm = torch.randperm(users.numel(), generator=self.gen)
        total, steps = 0.0, 0
        shown = cfg.progress and w.main
        bar = tqdm(
            range(0, perm.numel(), cfg.batch_size),
            desc=f"{model.name} epoch {epoch}",
            disable=None if shown else True,  # None: only on a terminal
            leave=False,
        )
        beat = self.heartbeat if shown and bar.disable else None
        if beat is not None:
            beat.start(epoch, len(bar.iterable), cfg.batch_size)
        for start in bar:
            rows = perm[start : start + cfg.batch_size]
            if rows.numel() < w.size:  # the last batch, too short to give every rank a row
                break
            idx = rows[w.rank :: w.size]
            batch = build_batch(self.data, users[idx], positions[idx], cfg.max_len, model.causal, ctx)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self._step_loss(batch).float() + self.regularization()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {steps}; "
                    f"lower the learning rate (now {cfg.lr}) or raise the temperature (now {model.temperature})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            total += loss.item()
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{total / steps:.4f}")
            if beat is not None:
                beat.step(steps)
        return distributed.total(total, self.device) / w.size, steps

    def fit(self, out_dir: str | Path | None = None, extra: dict | None = None) -> TrainResult:
        """Trains until ``epochs`` or early stopping; with ``out_dir``, writes the checkpoint there.

        With ``out_dir``, the state after each epoch (weights, optimizer, random streams, the
        early-stopping bookkeeping) is kept in ``train_state.pt``: a run started again into the same
        directory — a restarted ``torchrun`` after a rank died, a retried task — resumes after the last
        finished epoch instead of from scratch, if the state is of the same model, recipe and data
        (``extra["dataset_fingerprint"]``). The file is removed once the checkpoint is written. On ranks
        other than 0 the result carries the training time only.
        """
        cfg, model, w = self.config, self.model, self.world
        ctx = model.train_context
        users, positions = training_examples(self.data, self.split, model.causal, cfg.max_len, ctx)
        if users.numel() == 0:
            raise ValueError("no training examples: every user needs at least 2 training events")
        per_epoch = n_targets(self.split, model.causal, users, positions, cfg.max_len, ctx)
        result = TrainResult(best_epoch=0, best_score=float("nan"), val_metrics={})
        track = {"best_score": float("-inf"), "best_epoch": 0, "bad": 0, "best_state": None}
        state_path = Path(out_dir, "train_state.pt") if out_dir is not None else None
        key = self._resume_key(extra)
        self.run = json.loads(json.dumps((extra or {}).get("run"), default=str))
        first = 1
        if state_path is not None and w.main:
            for torn in state_path.parent.glob(f"{state_path.name}.*.tmp"):  # a rank stopped mid-write
                torn.unlink()
        if state_path is not None and state_path.exists():
            first = self._resume(state_path, key, result, track)
        for epoch in range(first, cfg.epochs + 1):
            t0 = time.perf_counter()
            total, steps = self.train_epoch(users, positions, epoch)
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            result.examples += per_epoch
            stop = False
            if w.main:
                val = evaluate_model(model, self.data, self.split, "val", cfg.max_len, ks=(10, 20, 50, 100))
                current = val[cfg.monitor]
                result.history.append({"epoch": epoch, "loss": total / max(steps, 1), "seconds": seconds, **val})
                logger.info(
                    "%s epoch %d loss %.4f val %s %.4f", model.name, epoch, total / max(steps, 1), cfg.monitor, current
                )
                if current > track["best_score"]:
                    best = copy.deepcopy(model.state_dict())
                    track.update(best_score=current, best_epoch=epoch, bad=0, best_state=best)
                    result.val_metrics = val
                else:
                    track["bad"] += 1
                    stop = track["bad"] >= cfg.patience
                    if stop:
                        logger.info("early stop at epoch %d (best %d)", epoch, track["best_epoch"])
                if state_path is not None:
                    self._save_state(state_path, key, epoch, result, track)
            if distributed.broadcast_flags([stop], self.device)[0]:
                break
        if not w.main:
            return result
        if track["best_state"] is not None and cfg.restore_best:
            model.load_state_dict(track["best_state"])
        result.best_epoch, result.best_score = track["best_epoch"], track["best_score"]
        if out_dir is not None:
            save_checkpoint(
                model,
                out_dir,
                {"train": asdict(cfg), "best_epoch": result.best_epoch, "val_metrics": result.val_metrics}
                | (extra or {}),
            )
            state_path.unlink(missing_ok=True)
        return result

    # --- resume --------------------------------------------------------------------------------
    def _resume_key(self, extra: dict | None) -> str:
        """What a saved state must have been trained with: the model, the recipe (not where it ran or how
        visibly) and the data."""
        recipe = {k: v for k, v in asdict(self.config).items() if k not in ("device", "progress")}
        what = {"model": self.model.config(), "train": recipe, "data": (extra or {}).get("dataset_fingerprint")}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def _save_state(self, path: Path, key: str, epoch: int, result: TrainResult, track: dict) -> None:
        estimator = getattr(self.model, "frequency_estimator", None)
        state = {
            "key": key,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "row_generator": self.row_gen.get_state() if self.row_gen is not None else None,
            "estimator": estimator.state() if estimator is not None else None,
            "track": track,
            "result": asdict(result),
            "run": self.run,  # the run's settings (`recall train --resume`)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a rank killed mid-write leaves the previous epoch's state whole

    def _resume(self, path: Path, key: str, result: TrainResult, track: dict) -> int:
        """Loads a saved state of this run into the trainer; returns the first epoch still to train."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["key"] != key:
            logger.warning("ignoring %s: it was saved by a run of another model, recipe or data", path)
            return 1
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"].cpu())
        if self.world.size == 1:  # other ranks keep their own dropout and row-draw streams
            torch.set_rng_state(state["torch_rng"].cpu())
            if self.row_gen is not None and state.get("row_generator") is not None:
                self.row_gen.set_state(state["row_generator"].cpu())
        if state["estimator"] is not None:
            self.model.frequency_estimator.load_state(state["estimator"])
        track.update(state["track"])
        for k, v in state["result"].items():
            setattr(result, k, v)
        logger.info("%s: resumed from %s after epoch %d", self.model.name, path, state["epoch"])
        if track["bad"] >= self.config.patience:  # it had stopped early: only the checkpoint is missing
            return self.config.epochs + 1
        return state["epoch"] + 1

    def inference_embedding(
        self, mode: str = "user", users: torch.Tensor | None = None, pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mode="item"``: all item vectors. ``mode="user"``: vectors of ``users`` at event ``pos``
        (default: every user, predicting the event after their last one)."""
        if mode == "item":
            return item_embeddings(self.model, self.data)
        if mode != "user":
            raise ValueError(f"unknown mode {mode!r}; choose one of: user, item")
        if users is None:
            users = torch.arange(1, self.data.n_users)
            pos = self.data.lengths[users]
        return user_embeddings(self.model, self.data, users, pos, self.config.max_len)
