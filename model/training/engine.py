"""One training loop for every task: ``train_fold`` trains and validates one fold, resumably, in the steps
of torchvision's reference scripts: ``FoldSetup`` (the fold's images, network, optimiser and loaders),
``train_one_epoch``, ``evaluate`` and ``select_epoch`` (rank 0), ``save_for_resume``; its files are those of
a fold folder (model.training.run_folder). Epochs count from 1 everywhere.

The selected epoch is the last one by default. Picking the epoch that scored best on the fold's own
validation images makes that fold's OOF score optimistic (on BUSI, 156 validation images, by up to 0.019;
more on smaller folds), and the decision rule is then tuned to that luck; ``select_epoch: best`` does it
anyway, with early stopping after ``patience`` epochs without a better score.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from ..atomic import atomic_path
from ..checkpoint import save_checkpoint
from ..device import autocast, resolve_device, resolve_precision, spare_cores
from ..network import create_network, head_parameters, input_norm, normalisation
from . import distributed
from .augment import DeviceLoader, fits_on_device
from .config import TrainConfig
from .dataset import EpochSampler, EvalDataset, ImageCache, TrainDataset, epoch_seed
from .run_folder import FoldFolder, RunFolder, done_record
from .seeding import seed_everything

log = logging.getLogger(__name__)


def training_precision(device: torch.device, requested: str) -> str:
    """bf16 autocast on a CPU with native bf16 support (AMX/AVX512-BF16), fp32 on others."""
    if requested == "auto" and device.type == "cpu":
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return resolve_precision(device, requested, training=True)


def param_groups(net: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; with ``layer_decay`` < 1 each block gets that
    fraction of the next one's learning rate (timm's grouping), and with ``backbone_lr`` < 1 everything but
    the classifier gets that fraction of ``lr``. Each group's ``lr`` is set; the schedule scales them all."""
    if cfg.layer_decay < 1:
        from timm.optim import param_groups_layer_decay
        groups = param_groups_layer_decay(net, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    else:
        decay, no_decay = [], []
        for name, p in net.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    head = {id(p) for p in head_parameters(net)}
    out = []
    for group in groups:
        for is_head in (True, False):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                scale = group.get("lr_scale", 1.0) * (1.0 if is_head else cfg.backbone_lr)
                out.append({"params": params, "weight_decay": group["weight_decay"], "lr": cfg.lr * scale})
    return out


def _schedule(total_steps: int, warmup_steps: int):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def checkpoint_meta(task, cfg: TrainConfig, fold: int, epoch: int, score: float) -> dict:
    """What rebuilds and describes a fold's network; never the run's config (it holds machine paths)."""
    mean, std = normalisation(cfg.backbone)
    return {"task": task.name, **task.kind.network_spec(cfg, len(task.heads)), "backbone": cfg.backbone,
            "heads": list(task.heads), "img_size": cfg.img_size, "mean": mean, "std": std,
            "input_norm": cfg.input_norm, "fold": fold,
            "epoch": epoch, "score": score}


@torch.inference_mode()
def predict_probs(net, norm, loader, device, precision, kind) -> np.ndarray:
    net.eval()
    out = []
    for images in loader:
        x = norm(images.to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(kind.probabilities(net(x).float()).cpu().numpy().astype(kind.prob_dtype))
    return np.concatenate(out)


def validation_score(task, labels: np.ndarray, probs: np.ndarray) -> float:
    """The task's metric with the neutral decision rule: what early stopping and model selection see."""
    return task.kind.scores(task, labels, task.decide(probs), probs)["score"]


def resolve_workers(workers: int, device: torch.device) -> int:
    """Loader processes: at most one on CPU, where the main process needs the cores for the step itself."""
    return spare_cores(workers, device, most_on_cpu=1)


def set_head(net, W: np.ndarray, b: np.ndarray) -> None:
    """Set the classifier of ``net`` to the linear layer (W (heads, D), b (heads,)): the probe's head."""
    classifier = net.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(torch.as_tensor(W, dtype=classifier.weight.dtype))
        classifier.bias.copy_(torch.as_tensor(b, dtype=classifier.bias.dtype))


class Stepper:
    """The network and everything one optimisation step touches: the step the loop runs and the
    throughput benchmark times. ``state_dict()``/``load_state_dict()`` hold what resuming needs."""

    def __init__(self, task, cfg: TrainConfig, targets: np.ndarray, masks: np.ndarray, total_steps: int,
                 device: torch.device, head=None):
        self.device, self.grad_clip, self.kind = device, cfg.grad_clip, task.kind
        self.precision = training_precision(device, cfg.precision)
        self.norm = input_norm(cfg.backbone, cfg.input_norm).to(device)
        # channels_last on CPU too: lite0 trains at 17 img/s instead of 9 on the 2-core dev CPU (oneDNN).
        spec = task.kind.network_spec(cfg, len(task.heads))
        net = create_network(cfg.backbone, spec["outputs"], cfg.pretrained, cfg.drop_rate, spec["architecture"])
        if head is not None:
            set_head(net, *head)
        self.net = net.to(device).to(memory_format=torch.channels_last)
        # The step runs the network through DDP under torchrun (gradients averaged over the processes) and
        # compiled with --set compile=true: the same parameters either way. Rank 0 alone keeps the EMA.
        self.step_net = distributed.wrap(torch.compile(self.net) if cfg.compile else self.net, device)
        keep_ema = cfg.ema_decay > 0 and distributed.is_main()
        self.ema = ModelEmaV3(self.net, decay=cfg.ema_decay, use_warmup=True) if keep_ema else None
        self.loss_fn = task.kind.make_loss(cfg, targets, masks).to(device)
        groups = param_groups(self.net, cfg)
        loss_params = list(self.loss_fn.parameters())  # learned task weights, when the loss has any
        if loss_params:
            groups.append({"params": loss_params, "weight_decay": 0.0, "lr": cfg.lr})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        steps_per_epoch = total_steps / max(cfg.epochs, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(total_steps, round(cfg.warmup_epochs * steps_per_epoch)))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.steps = 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One step on a batch; returns the loss as a tensor on the device (no .item(): it would wait)."""
        device = self.device
        x = self.norm(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, self.precision):
            outputs = self.kind.training_outputs(self.step_net, x, targets)
        loss = self.loss_fn(outputs.float(), targets, masks.to(device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.loss_fn.parameters())   # DDP averages the network's own
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)  # the task weights stay unclipped
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.net, step=self.steps)
        return loss.detach()

    @property
    def model(self) -> torch.nn.Module:
        """The network that is validated and saved: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "loss": self.loss_fn.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        self.net.load_state_dict(saved["model"])
        self.loss_fn.load_state_dict(saved["loss"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])


class ResumeError(ValueError):
    """A resume state that cannot be used; the message says which file to delete."""


def read_resume_state(path: Path, step: "Stepper", device: torch.device) -> dict:
    """The saved state of an interrupted fold, loaded into ``step``; ResumeError for a file that is corrupt,
    holds code (refused: weights_only), or was saved by another recipe."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        step.load_state_dict(saved)
        if not isinstance(saved.get("state"), dict) or "epoch" not in saved["state"]:
            raise KeyError("state")
        return saved
    except Exception as e:  # noqa: BLE001  (truncated zip, pickled code, another network: one answer)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ResumeError(f"{path}: cannot resume from this file ({reason}). Delete it to restart this fold from "
                          "its first epoch (the other folds are kept)") from e


def resolve_augment(cfg: TrainConfig, cache: ImageCache, device: torch.device) -> str:
    """Where images are augmented: as asked, or for auto on a GPU that holds the cache, else on the CPU."""
    if cfg.augment != "auto":
        return cfg.augment
    return "device" if device.type == "cuda" and fits_on_device(cache, device) else "cpu"


def training_batches(cfg: TrainConfig, cache: ImageCache, targets: np.ndarray, masks: np.ndarray,
                     sampler: EpochSampler, batch_size: int, device: torch.device, box_targets: bool = False):
    """An iterable of (uint8 or float images, targets, masks) per epoch: augmented on the device from a
    cache held there, or by loader processes that persist from epoch to epoch."""
    if not box_targets and resolve_augment(cfg, cache, device) == "device":
        return DeviceLoader(cache, targets, masks, sampler, batch_size, cfg.img_size, cfg.aug_strength,
                            cfg.cutmix_p, device, cfg.gray_p)
    workers = resolve_workers(cfg.workers, device)
    dataset = TrainDataset(cache, targets, masks, cfg.img_size, cfg.aug_strength, cfg.cutmix_p, cfg.gray_p, box_targets)
    # A generator of its own: the loader draws its workers' base seed from it, not from the global one
    # that dropout uses (which would then depend on the number of workers).
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, generator=torch.Generator().manual_seed(cfg.seed))


class FoldSetup:
    """What training one fold needs, made once before its first epoch: the fold's images, the stepper,
    the sampler and loaders, and how the batch is shared among the processes."""

    def __init__(self, task, cfg: TrainConfig, cache: ImageCache, targets: np.ndarray, masks: np.ndarray,
                 labels: np.ndarray, fold_ids: np.ndarray, fold: int, head=None):
        self.task, self.cfg, self.fold = task, cfg, fold
        self.device = device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        train_idx, val_idx = np.flatnonzero(fold_ids != fold), np.flatnonzero(fold_ids == fold)
        seed_everything(cfg.seed + fold)
        self.world = world = distributed.current()
        self.processes = processes = world.size if world else 1
        # batch_size is per process; a tiny fold still gets one full step per epoch.
        if len(train_idx) < processes:
            raise ValueError(f"fold {fold}: {len(train_idx)} training images for {processes} processes; use fewer")
        self.batch_size = batch_size = min(cfg.batch_size, len(train_idx) // processes)
        self.steps_per_epoch = len(train_idx) // (batch_size * processes)
        self.step = Stepper(task, cfg, targets[train_idx], masks[train_idx], cfg.epochs * self.steps_per_epoch,
                            device, head)
        self.sampler = EpochSampler(len(train_idx), self.steps_per_epoch * batch_size * processes, cfg.seed, fold,
                                    task.kind.sample_weights(cfg, targets[train_idx]))
        if world:
            log.info("fold %d: %d processes (%s), %d images per process per step, %d globally", fold, processes,
                     torch.distributed.get_backend(), batch_size, batch_size * processes)
        self.loader = training_batches(cfg, cache.subset(train_idx), targets[train_idx], masks[train_idx],
                                       distributed.ShardedSampler(self.sampler, world) if world else self.sampler,
                                       batch_size, device, task.kind.box_targets)
        self.val_loader = DataLoader(EvalDataset(cache.eval[val_idx]), batch_size=cfg.batch_size * 2)
        self.val_labels, self.n_val = labels[val_idx], int(len(val_idx))


def start_state(setup: FoldSetup, folder: FoldFolder) -> dict:
    """The fold's progress: a fresh one, or the one saved in last.pt, loaded into the stepper with it.
    Every process resumes from the same file (rank 0's)."""
    if not folder.last.is_file():
        return {"epoch": 0, "step": 0, "selected_score": -1.0, "selected_epoch": 0, "history": []}
    state = read_resume_state(folder.last, setup.step, setup.device)["state"]
    setup.step.steps = state["step"]
    log.info("fold %d: resuming after epoch %d", setup.fold, state["epoch"])
    return state


def stops_early(cfg: TrainConfig, state: dict, epoch: int) -> bool:
    """``select_epoch: best`` stops after ``patience`` epochs without a better score; rank 0's decision,
    the only one that validates, holds for every process."""
    stop = cfg.select_epoch == "best" and state["selected_epoch"] and epoch - state["selected_epoch"] > cfg.patience
    return distributed.agree(bool(stop))


def train_one_epoch(setup: FoldSetup, epoch: int) -> float:
    """One pass over the fold's training images; the mean loss over every process's steps."""
    cfg, step = setup.cfg, setup.step
    # Every epoch starts from its own seed (dropout) and the sampler's (order, augmentation), so a
    # resumed run repeats an uninterrupted one exactly.
    seed_everything(epoch_seed(cfg.seed, setup.fold, epoch))
    setup.sampler.set_epoch(epoch)
    step.net.train()
    loss_sum = torch.zeros((), device=setup.device)
    for images, batch_targets, batch_masks in setup.loader:
        loss_sum += step(images, batch_targets, batch_masks)
    train_loss = distributed.mean_over_processes(loss_sum).item() / setup.steps_per_epoch
    if not np.isfinite(train_loss):
        raise FloatingPointError(f"fold {setup.fold}, epoch {epoch}: loss is {train_loss}; lower lr or use fp32")
    return train_loss


def evaluate(setup: FoldSetup, epoch: int) -> tuple[np.ndarray, float]:
    """(validation probabilities, validation score) of the network that would be saved (the EMA, if kept)."""
    step = setup.step
    probs = predict_probs(step.model, step.norm, setup.val_loader, setup.device, step.precision, setup.task.kind)
    if not np.isfinite(probs).all():
        raise FloatingPointError(f"fold {setup.fold}, epoch {epoch}: the model diverged (non-finite validation "
                                 "probabilities); lower lr or use --set precision=fp32")
    return probs, validation_score(setup.task, setup.val_labels, probs)


def select_epoch(setup: FoldSetup, state: dict, folder: FoldFolder, epoch: int, probs: np.ndarray,
                 score: float) -> None:
    """Keep this epoch as the fold's network (best.pt, oof.npy) when the selection rule picks it: the last
    epoch, or with ``select_epoch: best`` a better score than the selected one's."""
    cfg = setup.cfg
    if cfg.select_epoch == "last" and epoch == cfg.epochs or cfg.select_epoch == "best" and score > state["selected_score"]:
        state["selected_score"], state["selected_epoch"] = score, epoch
        save_checkpoint(folder.best, setup.step.model, checkpoint_meta(setup.task, cfg, setup.fold, epoch, score))
        folder.save_oof(probs)


def save_for_resume(setup: FoldSetup, state: dict, folder: FoldFolder) -> None:
    """last.pt: the stepper's state and the fold's progress, what ``start_state`` reads back."""
    with atomic_path(folder.last) as tmp:
        torch.save({**setup.step.state_dict(), "state": state}, tmp)


def fold_record(setup: FoldSetup, state: dict) -> dict:
    """The fold's done.json record (model.training.run_folder describes it)."""
    log_vars = setup.step.loss_fn.state_dict().get("log_vars")
    history = state["history"]
    return done_record(setup.fold, state["selected_epoch"], state["selected_score"], state["epoch"], setup.n_val,
                       setup.step.precision,
                       float(np.mean([h["seconds"] for h in history])) if history else None,
                       log_vars=log_vars.tolist() if log_vars is not None else None,
                       **({"processes": setup.processes, "global_batch_size": setup.batch_size * setup.processes}
                          if setup.world else {}))


def train_fold(task, cfg: TrainConfig, cache: ImageCache, targets: np.ndarray, masks: np.ndarray,
               labels: np.ndarray, fold_ids: np.ndarray, fold: int, run_dir: Path, report=None, head=None) -> dict:
    """Train fold ``fold``; resumes from last.pt, returns the fold's record (also saved as done.json).

    ``report(epoch, score)`` is called after every epoch (tuning uses it for pruning). ``head``: (W, b) to
    start the classifier from (the fold's linear probe), else it starts small and random.
    """
    folder = RunFolder(run_dir).fold(fold)
    done = folder.read_done()
    if done is not None:
        log.info("fold %d: already finished (epoch %d selected, score %.4f), skipped", fold, done["selected_epoch"], done["score"])
        return done
    folder.path.mkdir(parents=True, exist_ok=True)
    setup = FoldSetup(task, cfg, cache, targets, masks, labels, fold_ids, fold, head)
    state = start_state(setup, folder)
    saved_at = time.monotonic()
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if stops_early(cfg, state, epoch):
            log.info("fold %d: no better score for %d epochs, stopping", fold, cfg.patience)
            break
        started = time.perf_counter()
        train_loss = train_one_epoch(setup, epoch)
        state["step"], state["epoch"] = setup.step.steps, epoch
        if not distributed.is_main():
            continue   # rank 0 validates, selects and saves
        probs, score = evaluate(setup, epoch)
        seconds = time.perf_counter() - started
        state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_score": score,
                                 "lr": max(g["lr"] for g in setup.step.optimizer.param_groups), "seconds": seconds})
        log.info("fold %d epoch %d/%d: loss %.4f, val score %.4f (%.1fs)", fold, epoch, cfg.epochs,
                 train_loss, score, seconds)
        select_epoch(setup, state, folder, epoch, probs, score)
        if epoch < cfg.epochs and time.monotonic() - saved_at >= cfg.checkpoint_every:
            save_for_resume(setup, state, folder)
            saved_at = time.monotonic()
        folder.write_history(state["history"])
        if report is not None:
            report(epoch, score)

    record = fold_record(setup, state)
    if distributed.is_main():
        folder.finish(record)
    distributed.barrier()   # the next fold, or the summary, finds this one's files
    return record
