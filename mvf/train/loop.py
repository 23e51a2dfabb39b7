"""The training loop: stages in order, Adam, logs, validation, checkpoints, exact resume, DDP.

Determinism: the data order and each item's augmentation seed are pure functions of
``(seed, stage index, position in the stage's sample stream)``, so a run resumed from a
checkpoint at global step ``k`` sees exactly the batches an uninterrupted run sees after ``k``.
The learning rate is a function of the step, and the checkpoint carries the network, Adam's
state and the RNG states.

Sample stream of a stage: epoch ``e`` is a permutation of the stage's ``n`` items drawn from
a generator seeded by ``(seed, stage, e)``; the stream concatenates the epochs; step ``k`` takes
stream positions ``[k B, (k + 1) B)``; DDP rank ``r`` of ``W`` takes its ``B / W`` contiguous share
(like ``DistributedSampler``, disjoint per step).

A stage with ``max_minutes`` also ends when its (rank 0's) wall time runs out, and its cosine
schedule follows the larger of the step and time fractions; such runs are not bit-reproducible.
A stage with a zero budget is skipped without building its dataset.
"""
from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mvf.config import to_dict
from mvf.data import SynthDataset, split_subjects
from mvf.errors import INPUT_ERRORS, MvfError, file_error
from mvf.face.landmarks import LandmarkProjector
from mvf.face.model import FaceModel
from mvf.fileio import write_bytes, write_image, write_json
from mvf.losses.supervised import face_region
from mvf.net.network import MVFNet, build_network
from mvf.train import checkpoint as ckpt_io
from mvf.train import ddp
from mvf.train.config import LossWeights, StageConfig, TrainConfig
from mvf.train.detector_sim import VALIDATION_SEED, detector_batch, network_inputs
from mvf.train.logs import RunLogger
from mvf.train.runfolder import RunFolder
from mvf.train.status import StatusLine
from mvf.train.selfsup_stage import training_sheets
from mvf.train.stages import STAGE_KINDS, DataRequest, LossContext, StageKind, dataset_subjects, resolved
from mvf.train.validation import evaluate, to_device

VAL_COLUMNS = ["step", "stage", "epoch", "rmse_mm", "rmse_median_mm", "rmse_p90_mm", "rmse_sim_mm",
               "landmark_px", "pose_deg", "n_subjects"]
BEST_METRIC = "rmse_mm"


def train_columns() -> list[str]:
    terms = [f.name for f in dataclasses.fields(LossWeights)]
    return ["step", "stage", "epoch", "lr", "loss", *terms, "sec_per_step"]


# ----------------------------------------------------------------------------- sampling
def item_seed(seed: int, stage: int, position: int, purpose: int = 0) -> int:
    """A 63-bit seed for stream ``position`` of a stage (``purpose`` 0: an item's augmentation,
    1: the permutation of epoch ``position``, 2: the stage's `StageKind.prepare`)."""
    state = np.random.SeedSequence([seed, stage, purpose, position]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class StageStream(Sampler):
    """Batches ``[(index, epoch, item_seed), ...]`` for steps ``start..end`` of a stage (this
    rank's share)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, stage: int, start: int, end: int,
                 rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.stage = n_items, batch_size, seed, stage
        self.start, self.end, self.rank, self.world = start, end, rank, world
        self.local = batch_size // world
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(item_seed(self.seed, self.stage, epoch, purpose=1))
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        return self._perms[epoch]

    def batch_at(self, step: int) -> list[tuple[int, int, int]]:
        first = step * self.batch + self.rank * self.local
        out = []
        for pos in range(first, first + self.local):
            epoch, off = divmod(pos, self.n)
            out.append((int(self.perm(epoch)[off]), epoch, item_seed(self.seed, self.stage, pos)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.end):
            yield self.batch_at(step)

    def __len__(self) -> int:
        return self.end - self.start


class WorkerInputError(MvfError):
    """Bad input met in a DataLoader worker. Torch re-raises a worker's exception in the main
    process as ``type(message with the worker's traceback)``; this type keeps only the last line
    (the original one-line message), so the CLI still prints one line."""

    def __init__(self, message: str):
        last = str(message).rstrip().splitlines()[-1] if str(message).strip() else str(message)
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])


class SeededItems(Dataset):
    """Wraps a dataset: item ``(index, epoch, seed)`` is ``base[index]`` drawn in ``epoch``
    (``base.set_epoch`` when it has one, as `mvf.data.SynthDataset` seeds its augmentation
    from (its seed, epoch, index)) with every global RNG (torch, numpy, python) seeded by
    ``seed`` for datasets that draw from those; the caller's RNG states are restored."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int]):
        index, epoch, seed = key
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % (2 ** 32))
                random.seed(seed)
                return self.base[index]
        except INPUT_ERRORS as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerInputError(str(e)) from None
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def stage_progress(stage: StageConfig, k: int, n_steps: int, seconds: float = 0.0) -> float:
    """Fraction of a stage done after ``k`` of ``n_steps`` steps and ``seconds`` of training:
    ``k / n_steps``, or the time fraction when the stage has a ``max_minutes`` budget and that
    is further along."""
    frac = k / n_steps if n_steps > 0 else 1.0
    if stage.max_minutes:
        frac = max(frac, seconds / (60.0 * stage.max_minutes))
    return min(frac, 1.0)


def lr_at(stage: StageConfig, k: int, n_steps: int, seconds: float = 0.0) -> float:
    """Learning rate at step ``k`` (0-based) of a stage of ``n_steps`` steps (``seconds`` of
    training so far, for a time-budgeted stage)."""
    lr = stage.lr
    if stage.schedule == "cosine":
        frac = stage_progress(stage, k, n_steps, seconds)
        lr *= stage.min_lr_fraction + (1.0 - stage.min_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if stage.warmup_steps and k < stage.warmup_steps:
        lr *= (k + 1) / stage.warmup_steps
    return lr


# ----------------------------------------------------------------------------- set-up
@dataclass
class PlannedStage:
    index: int
    cfg: StageConfig
    kind: StageKind
    dataset: Dataset | None  # None for a stage switched off with a zero budget
    n_items: int
    steps: int  # planned steps (a time budget may end the stage sooner)

    def epoch(self, k: int) -> float:
        """Epochs completed after ``k`` steps of this stage."""
        return k * self.cfg.batch_size / self.n_items if self.n_items else 0.0


def pick_device(name: str, info: ddp.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MvfError(f"device '{name}': CUDA is not available on this machine")
        if info.enabled and name == "cuda":
            return torch.device("cuda", info.local_rank)
    return torch.device(name)


def build_context(cfg: TrainConfig, device: torch.device, net: MVFNet, face: FaceModel) -> LossContext:
    return LossContext(face=face, projector=LandmarkProjector(face), pose_norm=net.pose_norm,
                       region=face_region(face, cfg.validation.face_radius_mm), model_cfg=cfg.model,
                       device=device)


def split_validation(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """``(train, val)`` subject ids of the validation root."""
    v = cfg.validation
    subjects = dataset_subjects(v.root)
    if v.val_fraction <= 0:
        return subjects, []
    train, val = split_subjects(subjects, v.val_fraction, v.split_seed)
    val = list(val)
    if v.max_subjects is not None:
        val = val[: v.max_subjects]
    return list(train), val


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """One training run into ``out_dir``.

    Args:
        cfg: the validated config. out_dir: run folder (checkpoints, CSV, TensorBoard).
        resume: continue from ``out_dir/last.pt``, or when a kill left that missing or
            unreadable, from the newest complete ``step-*.pt`` (with a one-line notice).
            max_steps: stop after this many global steps in total (a cap, e.g. for quick
            runs; the schedule is unchanged).

    The run folder is checked before any work and cleaned of orphaned temporaries; a fresh run
    (no ``resume``) is refused where a checkpoint exists, and otherwise starts the logs anew.
    A fresh run that fails before its first checkpoint (bad data, a config error) removes what
    it created (`mvf.train.runfolder.RunFolder.undo`); a Ctrl-C after set-up keeps its logs.
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
                 max_steps: int | None = None, info: ddp.DistInfo | None = None, quiet: bool = False):
        self.cfg, self.out = cfg, Path(out_dir)
        self.max_steps, self.quiet = max_steps, quiet
        self.info = info or ddp.DistInfo()
        self.device = pick_device(cfg.device, self.info)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif self.info.enabled and self.device.type == "cpu":
            torch.set_num_threads(max(1, (torch.get_num_threads()) // self.info.world))
        for st in cfg.stages:
            if st.batch_size % self.info.world:
                raise MvfError(f"stage '{st.name}': batch_size {st.batch_size} does not split over "
                               f"{self.info.world} processes")
        self.folder = RunFolder(self.out) if self.info.is_main else None
        self.resumed = resume
        self.checkpointed = False  # whether this run has written a step checkpoint
        try:
            self._start(resume)
        except BaseException:
            if self.folder is not None:
                self.folder.undo()
            raise

    def _start(self, resume: bool) -> None:
        cfg = self.cfg
        resume_ckpt = None
        self.resume_path = self.out / ckpt_io.LAST_NAME
        if resume:
            resume_ckpt, self.resume_path, notice = ckpt_io.load_resume_checkpoint(self.out)
            if notice and self.info.is_main:
                print(f"notice: {notice}", file=sys.stderr)
            self._check_resume_config(resume_ckpt, self.resume_path)
        else:
            found = [p for p in (self.resume_path, *(p for _, p in ckpt_io.step_checkpoints(self.out)))
                     if p.exists()]
            if found:
                raise file_error(self.out, f"already holds a run ({found[0].name}); pass --resume to "
                                           "continue it or choose another --out")
        if self.folder is not None:
            self.folder.remove_temporaries()

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        self.face = FaceModel.load(cfg.model.face_model, device=self.device)
        # a resumed run takes its weights from the checkpoint, not from model.pretrained
        model_cfg = dataclasses.replace(cfg.model, pretrained=None) if resume else cfg.model
        self.net = build_network(model_cfg, self.face).to(self.device)
        self.ctx = build_context(cfg, self.device, self.net, self.face)
        self.model: torch.nn.Module = self.net
        if self.info.enabled:
            # depthwise convs' grads come in another memory layout than DDP's buckets: harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # a geometry stage leaves the image branch out of the graph
                find_unused_parameters=cfg.model.landmark_head)

        _, self.val_subjects = split_validation(cfg)
        exclude = {resolved(cfg.validation.root): set(self.val_subjects)}
        self.plan = self._plan(exclude)
        self.val_loader = self._val_loader() if self.val_subjects else None

        self.step = 0  # global steps done
        self.stage_index = 0  # running stage
        self.stage_step = 0  # steps done in the running stage
        self.stage_seconds = 0.0  # training time spent in the running stage (time budgets)
        self.best: dict = {"metric": BEST_METRIC, "value": None, "step": None}
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_stage: int | None = None
        self._frozen: list[torch.nn.Parameter] = []
        self._resume_opt: tuple[int, dict] | None = None
        if resume_ckpt is not None:
            self._restore(resume_ckpt, self.resume_path)

        self.logger = None
        if self.info.is_main:
            fresh = resume_ckpt is None
            purge = None if fresh else self.step + 1  # steps <= self.step were logged
            self.logger = RunLogger(self.out, train_columns(), VAL_COLUMNS, cfg.tensorboard, purge_step=purge,
                                    fresh=fresh)
            if fresh:  # no checkpoint here (checked above): a best.pt is a killed run's
                (self.out / "best.pt").unlink(missing_ok=True)
                write_bytes(self.out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
            else:
                self.logger.truncate_after(self.step)

    # -- set-up helpers
    def _check_resume_config(self, ckpt: dict, path: Path) -> None:
        old = ckpt["config"]
        new = to_dict(self.cfg)
        if old.get("model") != new["model"]:
            key = next((k for k in new["model"] if old.get("model", {}).get(k) != new["model"][k]), "?")
            raise file_error(path, f"checkpoint's model differs from the config (model.{key}); "
                                   "resume needs the same network")
        if old != new and self.info.is_main and not self.quiet:
            print(f"warning: {path}: config differs from the checkpoint's outside 'model'; "
                  "continuing with the new config", file=sys.stderr)

    def _plan(self, exclude: dict[str, set[str]]) -> list[PlannedStage]:
        plan = []
        for i, st in enumerate(self.cfg.stages):
            kind = STAGE_KINDS[st.kind]
            if st.steps == 0 or st.epochs == 0:  # switched off (e.g. --set stages.NAME.steps=0): skipped
                plan.append(PlannedStage(i, st, kind, None, 0, 0))
                continue
            dataset = kind.make_dataset(DataRequest(st, self.cfg.model, exclude, seed=self.cfg.seed * 1000 + i))
            n = len(dataset)
            if n == 0:
                raise MvfError(f"{st.data.root}: stage '{st.name}' has no samples")
            steps = st.steps if st.steps is not None else math.ceil(st.epochs * n / st.batch_size)
            plan.append(PlannedStage(i, st, kind, dataset, n, steps))
        return plan

    def _val_loader(self) -> DataLoader:
        v = self.cfg.validation
        ds = SynthDataset(v.root, subjects=self.val_subjects, augment=None,
                          views=tuple(self.cfg.model.views), size=self.cfg.model.image_size)
        return DataLoader(ds, batch_size=v.batch_size, shuffle=False, num_workers=0)

    def _restore(self, ckpt: dict, path: Path) -> None:
        ckpt_io.load_model_state(self.net, ckpt["model"], path)
        self.step = int(ckpt["step"])
        pos = ckpt.get("position") or {}
        self.stage_index = int(pos.get("stage", 0))
        self.stage_step = int(pos.get("stage_step", self.step))
        self.stage_seconds = float(pos.get("stage_seconds", 0.0))
        self.best = dict(ckpt.get("best") or self.best)
        if ckpt.get("rng") is not None:
            ckpt_io.set_rng_state(ckpt["rng"])
        if ckpt.get("optimizer") is not None:
            self._resume_opt = (int(ckpt["optimizer_stage"]), ckpt["optimizer"])

    # -- stages and optimisers
    @property
    def total_steps(self) -> int:
        """Planned global steps: steps done in finished stages + the planned rest."""
        rest = sum(st.steps for st in self.plan[self.stage_index:])
        return self.step - self.stage_step + rest

    def _stage_done(self, stage: PlannedStage) -> bool:
        return stage_progress(stage.cfg, self.stage_step, stage.steps, self.stage_seconds) >= 1.0

    def _enter_stage(self, stage: PlannedStage) -> None:
        """Make the Adam optimiser for ``stage`` (fresh, kept from the previous stage, or resumed)."""
        c = stage.cfg
        keep = self.optimizer is not None and not c.reset_optimizer
        frozen = tuple(c.freeze)
        params, self._frozen = [], []
        for name, p in self.net.named_parameters():
            (self._frozen if frozen and name.startswith(frozen) else params).append(p)
        if not params:
            raise MvfError(f"stage '{c.name}': 'freeze' {list(c.freeze)} leaves no parameter to train")
        if not keep:
            self.optimizer = torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas),
                                              weight_decay=c.weight_decay)
            if self._resume_opt is not None:
                opt_stage, state = self._resume_opt
                if opt_stage == stage.index or not c.reset_optimizer:
                    try:
                        self.optimizer.load_state_dict(state)
                    except (ValueError, KeyError) as e:
                        raise file_error(self.resume_path, f"optimizer state does not fit ({e})") from None
        for group in self.optimizer.param_groups:
            group["betas"], group["weight_decay"] = tuple(c.betas), c.weight_decay
        self._resume_opt = None
        self.opt_stage = stage.index

    def _loader(self, stage: PlannedStage, k0: int, k1: int) -> DataLoader:
        c = stage.cfg
        sampler = StageStream(stage.n_items, c.batch_size, self.cfg.seed, stage.index, k0, k1,
                              self.info.rank, self.info.world)
        return DataLoader(SeededItems(stage.dataset), batch_sampler=sampler,
                          num_workers=c.data.num_workers, persistent_workers=False)

    # -- one step
    def train_step(self, stage: PlannedStage, batch: dict, lr: float) -> dict[str, float]:
        """One optimiser step on ``batch``; returns the rank-averaged loss and terms."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        batch = to_device(batch, self.device)
        total, terms = stage.kind.compute_loss(self.ctx, self.model, batch, stage.cfg.loss, stage.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for p in self._frozen:  # a frozen part may still pass gradients on, but never moves
            p.grad = None
        if stage.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), stage.cfg.grad_clip)
        self.optimizer.step()
        names = ["loss", *terms]
        values = torch.stack([total.detach(), *[t.detach() for t in terms.values()]]).float().cpu()
        values = ddp.all_mean(values, self.info)
        out = dict(zip(names, values.tolist()))
        if not math.isfinite(out["loss"]):
            raise MvfError(f"training diverged at step {self.step + 1} (loss {out['loss']}); "
                           f"lower stages.{stage.cfg.name}.lr or set grad_clip")
        return out

    # -- validation and checkpoints
    def validate(self, stage: PlannedStage) -> dict[str, float] | None:
        """Rank 0 evaluates the held-out subjects; logs, and saves best.pt on improvement."""
        result = None
        if self.info.is_main and self.val_loader is not None:
            summary = evaluate(self.net, self.val_loader, self.ctx).summary()
            self.logger.log_val(self.step, {"stage": stage.cfg.name, "epoch": round(stage.epoch(self.stage_step), 4),
                                            **summary})
            value = summary[BEST_METRIC]
            if math.isfinite(value) and (self.best["value"] is None or value < self.best["value"]):
                self.best = {"metric": BEST_METRIC, "value": value, "step": self.step}
                self.save(self.out / "best.pt", with_optimizer=False)
            result = summary
        ddp.barrier(self.info)
        self.best = ddp.broadcast_object(self.best, self.info)
        return result

    def state(self, with_optimizer: bool = True) -> dict:
        return {
            "config": to_dict(self.cfg),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict() if (with_optimizer and self.optimizer) else None,
            "optimizer_stage": self.opt_stage,
            "step": self.step,
            "position": {"stage": self.stage_index, "stage_step": self.stage_step,
                         "stage_seconds": self.stage_seconds},
            "best": self.best,
            "rng": ckpt_io.rng_state(),
            "face_model": self.face.asset_id,
            "pose_norm": {"mean": list(self.net.pose_norm.mean), "scale": list(self.net.pose_norm.scale)},
        }

    def save(self, path: Path, with_optimizer: bool = True) -> None:
        if self.info.is_main:
            ckpt_io.save_checkpoint(path, self.state(with_optimizer))

    def checkpoint(self) -> None:
        """``step-NNNNNNN.pt`` and ``last.pt``; older step files beyond `keep_checkpoints` go."""
        if not self.info.is_main:
            return
        state = self.state()
        ckpt_io.save_checkpoint(self.out / ckpt_io.step_name(self.step), state)
        ckpt_io.save_checkpoint(self.out / ckpt_io.LAST_NAME, state)
        self.checkpointed = True
        # (a step file beyond this step is a killed run's unreadable one: replaced when reached)
        olds = [p for s, p in ckpt_io.step_checkpoints(self.out) if s <= self.step]
        for old in olds[: max(0, len(olds) - self.cfg.keep_checkpoints)]:
            old.unlink(missing_ok=True)

    # -- the run
    def run(self) -> dict:
        """Train to the end of the last stage (or ``max_steps`` global steps); returns a summary."""
        cap = self.max_steps
        bar = tqdm(total=self.total_steps if cap is None else min(cap, self.total_steps), initial=self.step,
                   unit="step", dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   disable=not (self.info.is_main and self.cfg.progress and not self.quiet))
        status = StatusLine(bar.total, self.step, enabled=self.info.is_main and self.cfg.progress and self.quiet)
        last_saved = last_validated = None
        last_val: dict | None = None
        last_terms: dict = {}
        t_start = time.perf_counter()
        steps_done = 0
        try:
            while cap is None or self.step < cap:
                stage = self.plan[self.stage_index]
                if self._stage_done(stage):
                    if self.stage_index + 1 >= len(self.plan):
                        break
                    self.stage_index, self.stage_step, self.stage_seconds = self.stage_index + 1, 0, 0.0
                    continue
                if self.opt_stage != stage.index:
                    self._enter_stage(stage)
                if self.stage_step == 0 and stage.kind.prepare is not None:
                    done_prep = stage.kind.prepare(self.ctx, self.net, stage.cfg,
                                                   item_seed(self.cfg.seed, stage.index, 0, purpose=2))
                    if done_prep and self.info.is_main and self.cfg.progress:
                        print(f"train: stage {stage.cfg.name} prepared: {done_prep}", file=sys.stderr, flush=True)
                k1 = stage.steps if cap is None else min(stage.steps, self.stage_step + cap - self.step)
                tick = time.perf_counter()
                for batch in self._loader(stage, self.stage_step, k1):
                    lr = lr_at(stage.cfg, self.stage_step, stage.steps, self.stage_seconds)
                    last_terms = self.train_step(stage, batch, lr)
                    now = time.perf_counter()
                    sec, tick = now - tick, now
                    self.stage_seconds += self._agreed(sec) if stage.cfg.max_minutes else sec
                    self.step += 1
                    self.stage_step += 1
                    steps_done += 1
                    bar.update(1)
                    bar.set_postfix(stage=stage.cfg.name, loss=f"{last_terms['loss']:.4g}", refresh=False)
                    done = self._stage_done(stage)
                    at_cap = cap is not None and self.step >= cap
                    status.update(self.step, stage.cfg.name, last_terms["loss"],
                                  force=self.step >= bar.total)
                    if self.logger and (self.step % self.cfg.log_every == 0 or done or at_cap):
                        self.logger.log_train(self.step, {"stage": stage.cfg.name,
                                                          "epoch": round(stage.epoch(self.stage_step), 4),
                                                          "lr": lr, **last_terms, "sec_per_step": round(sec, 4)})
                    if self._validation_due(stage):
                        last_val, last_validated = self.validate(stage), self.step
                    if self.cfg.pictures_every and self.step % self.cfg.pictures_every == 0:
                        self.pictures(stage)
                    if self.step % self.cfg.checkpoint_every == 0:
                        self.checkpoint()
                        last_saved = self.step
                    if done:  # a time budget can end the stage before its planned steps
                        break
            # (a resumed run with nothing left to do saves and validates nothing: no row twice)
            if steps_done > 0 and last_saved != self.step:
                self.checkpoint()
            if steps_done > 0 and last_validated != self.step and self.plan:
                ran = [st for st in self.plan[: self.stage_index + 1] if st.steps > 0]
                last_val = self.validate(ran[-1] if ran else self.plan[self.stage_index])
            if self.info.enabled:
                self._check_sync()
        except Exception:
            if self.folder is not None and not self.resumed and not self.checkpointed:
                self.folder.undo()  # nothing resumable was made: leave no half-started run folder
            raise
        finally:
            bar.close()
            if self.logger:
                self.logger.close()
        elapsed = time.perf_counter() - t_start
        return {"step": self.step, "total_steps": self.total_steps, "steps_run": steps_done,
                "seconds": elapsed, "last_train": last_terms, "validation": last_val, "best": self.best,
                "out": str(self.out)}

    def _agreed(self, seconds: float) -> float:
        """Step time all ranks agree on (rank 0's), so time budgets end stages together."""
        if not self.info.enabled:
            return seconds
        return float(ddp.broadcast_object(seconds, self.info))

    def _check_sync(self) -> None:
        """All ranks must hold identical weights: rank 0 records the checksums in ``ddp_sync.json``."""
        ddp.broadcast_buffers(self.net, self.info)
        sums = ddp.gather_object(ddp.parameter_checksum(self.net), self.info)
        if self.info.is_main:
            write_json(self.out / "ddp_sync.json", {"world": self.info.world, "step": self.step, "checksums": sums})
        if any(s != sums[0] for s in sums):
            raise MvfError(f"DDP ranks diverged by step {self.step}: parameter checksums {sums}")

    def pictures(self, stage: PlannedStage) -> None:
        """Rank 0: picture sheets of the network on a fixed sample (the first validation subject,
        else the first stage's first item) with ``stage``'s cross-view settings, written to
        ``pictures/step_NNNNNN_<view>.png`` and TensorBoard (`mvf.train.selfsup_stage.training_sheets`).
        Eval mode, no gradients and no RNG draws: training continues exactly as without it."""
        if not self.info.is_main:
            return
        source = self.val_loader.dataset if self.val_loader is not None else self.plan[0].dataset
        item = source[0]
        sample = to_device({k: v[None] for k, v in item.items() if torch.is_tensor(v)}, self.device)
        gen = torch.Generator(device=self.device).manual_seed(VALIDATION_SEED)  # not the training RNG
        sample = detector_batch(self.ctx, sample, gen)  # detector input: as photos are cropped
        sheets = training_sheets(self.ctx, self.net, sample["images"][0], stage.cfg, network_inputs(sample))
        for view, sheet in zip(self.cfg.model.views, sheets):
            write_image(self.out / "pictures" / f"step_{self.step:06d}_{view}.png", sheet)
            if self.logger is not None and self.logger.tb is not None:
                self.logger.tb.add_image(f"pictures/{view}", sheet, self.step, dataformats="HWC")

    def _validation_due(self, stage: PlannedStage) -> bool:
        every = self.cfg.validation.every_steps
        if every:
            return self.step % every == 0
        k, b, n = self.stage_step, stage.cfg.batch_size, stage.n_items
        return (k * b) // n > ((k - 1) * b) // n  # crossed an epoch boundary


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, max_steps: int | None = None,
          quiet: bool = False) -> dict:
    """Run training (joins a torchrun process group when launched by torchrun)."""
    kind = "cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    info = ddp.init_distributed(kind)
    try:
        return Trainer(cfg, out_dir, resume=resume, max_steps=max_steps, info=info, quiet=quiet).run()
    finally:
        ddp.shutdown(info)
