"""One training run, start to summary.json: the loop, linear and readable top to bottom.

Build data, model and optimizer from the config; resume from the run directory's
checkpoint if asked; for each step draw a batch by index, forward, backward, check
for divergence, step; hand the numbers to telemetry when it is due; evaluate,
checkpoint and honour Ctrl-C between steps. Every way out (completed, diverged,
interrupted, failed) writes summary.json and closes the event files.
"""

from __future__ import annotations

import functools
import logging
import math
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bnlab.data.datasets import BatchSampler, load_dataset
from bnlab.errors import ConfigError, RunFileError
from bnlab.models.nets import build_model
from bnlab.telemetry.figures import gradient_figures
from bnlab.telemetry.recorder import Telemetry
from bnlab.telemetry.writer import RunWriter, as_logged
from bnlab.train import checkpoint, clipping, distributed, files, lock, summary
from bnlab.train.card import config_text, run_card
from bnlab.train.interrupt import stop_on_signals

log = logging.getLogger("bnlab.train.loop")
EVAL_CHUNK = 1024
HPARAM_METRICS = ("figures/grad_ratio_first_last/init", "figures/grad_ratio_first_last/final",
                  "figures/growth_factor/init", "figures/growth_factor/final", "loss/train", "loss/test", "acc/test")


@dataclass
class RunResult:
    run_dir: Path
    status: str
    steps: int
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    diverged_at: int | None = None
    telemetry_seconds: float = 0.0  # wall time inside telemetry's own calls (probes' hooks aside)
    telemetry_cpu_seconds: float = 0.0  # this thread's CPU time inside them
    measured_steps: int = 0  # steps that ran with the probes' hooks


class NullProgress:
    """What `train` reports to while it runs; the CLI passes a rich progress bar instead."""

    def start(self, total: int, done: int) -> None: ...
    def update(self, step: int, loss: float | None, accuracy: float | None) -> None: ...
    def stop(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but no CUDA device is available here; use train.device=cpu or auto")
    return torch.device(name)


def build_optimizer(optim_cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam with the fused implementation (one kernel over all parameters) where this torch
    has it for the device, else the multi-tensor one; both are torch's own update rules."""
    if optim_cfg.name == "adam":
        make = functools.partial(torch.optim.Adam, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    else:
        make = functools.partial(torch.optim.SGD, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                                 weight_decay=optim_cfg.weight_decay)
    try:
        return make(model.parameters(), fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch version
        return make(model.parameters(), foreach=True)


class FiniteCheck:
    """Whether a step's loss and every gradient are finite, with one host read per step.

    torch's own overflow check (the one GradScaler uses: one multi-tensor pass that raises a flag,
    multiplying by exactly 1) where it exists for the device; otherwise the norms of all gradients."""

    def __init__(self, device: torch.device):
        self.flag = torch.zeros(1, device=device)
        self.one = torch.ones(1, device=device)
        self.fused = hasattr(torch, "_amp_foreach_non_finite_check_and_unscale_")

    def __call__(self, loss: torch.Tensor, grads: list[torch.Tensor]) -> tuple[float, bool]:
        """(the loss as a float, whether loss and gradients are all finite)."""
        if self.fused:
            try:
                self.flag.zero_()
                if grads:
                    torch._amp_foreach_non_finite_check_and_unscale_(grads, self.flag, self.one)
                loss_value, flag = torch.cat([loss.detach().reshape(1).double(), self.flag.double()]).tolist()
                return loss_value, math.isfinite(loss_value) and flag == 0
            except (RuntimeError, NotImplementedError):  # not implemented for this device or dtype
                self.fused = False
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else loss.new_zeros(())
        loss_value, grad_value = torch.stack([loss.detach().double(), total.double()]).tolist()
        return loss_value, math.isfinite(loss_value) and math.isfinite(grad_value)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y), in eval mode (BatchNorm uses running statistics)."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        logits = model(x[i:i + EVAL_CHUNK])  # (B, classes)
        loss_sum += F.cross_entropy(logits, y[i:i + EVAL_CHUNK], reduction="sum")
        correct += (logits.argmax(dim=1) == y[i:i + EVAL_CHUNK]).sum()
    model.train()
    loss, accuracy = (torch.stack([loss_sum, correct]) / len(x)).tolist()
    return loss, accuracy


def train_accuracy(model: torch.nn.Module, data, enabled: bool) -> dict[str, float]:
    """{"acc/train": accuracy on the whole training set in eval mode} with log.train_accuracy, else {}: beside
    acc/test it gives the generalization gap, measured as the test set is."""
    return {"acc/train": evaluate(model, data.x_train, data.y_train)[1]} if enabled else {}


def train(cfg, run_dir: Path, overrides: list[str] | None = None, progress=None, images=None,
          hold_lock: bool = True) -> RunResult:
    """Train the run `cfg` describes in `run_dir`, continuing its checkpoint if `cfg.resume` is set.

    Holds the directory's lock while it trains (`bnlab train` takes it before Hydra starts; a sweep job
    here), unless `hold_lock` is False: the processes of a `train.nproc` run, whose launcher holds it.
    Raises RunFileError, leaving the run exactly as it was, when a resume fails before its first step.
    """
    run_dir = Path(run_dir)
    try:
        took_lock = lock.hold(run_dir) if hold_lock else False
    except OSError as error:
        raise files.write_error(run_dir / lock.LOCK_NAME, error, "lock file") from error
    try:
        # from here on Ctrl-C or SIGTERM, during the set-up too, ends the run `interrupted` with its summary
        with stop_on_signals() as stop:
            return _train(cfg, run_dir, overrides, progress or NullProgress(), images, stop)
    finally:
        if took_lock:
            lock.release(run_dir)


def _train(cfg, run_dir: Path, overrides, progress, images, stop) -> RunResult:
    record = {
        "status": "running", "steps": 0, "total_steps": cfg.train.steps, "seed": cfg.train.seed,
        "overrides": list(overrides or []), "config": OmegaConf.to_container(cfg, resolve=True),
        "metrics": {}, "figures": {}, "diverged_at": None, "skipped_steps": 0, "error": None,
        "started": _now(), "finished": None,
    }
    checkpoint_path = run_dir / checkpoint.CHECKPOINT_NAME
    resuming = cfg.resume is not None and (run_dir / summary.SUMMARY_NAME).exists()
    if resuming:
        previous = summary.read(run_dir)
        if previous["status"] == "completed":
            return RunResult(run_dir, "completed", previous["steps"], previous.get("metrics", {}))
        record["started"] = previous.get("started", record["started"])
        files.remove_leftovers(run_dir)  # a killed process's half-written files; the lock says none is writing
    else:
        summary.claim(run_dir, record)
    if distributed.is_launcher(cfg):  # train.nproc > 1: its processes train, this job waits for them
        return RunResult(run_dir, **distributed.launch(cfg, run_dir, record, progress))

    writer = telemetry = None
    began = False  # until the loop begins, a failed resume leaves the run's summary.json as it was
    flushed = torch.set_flush_denormal(cfg.train.flush_denormal)
    threads = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    try:
        device = resolve_device(cfg.train.device)
        checkpoint.seed_everything(cfg.train.seed)
        data = load_dataset(cfg.data.name, root=cfg.data.root, download=cfg.data.download, seed=cfg.train.seed,
                            synthetic_dim=cfg.data.dim, synthetic_samples=cfg.data.samples,
                            flatten=cfg.model.name == "mlp").to(device)
        model = build_model(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
        log.info("model: %d parameters", sum(p.numel() for p in model.parameters()))
        if cfg.train.channels_last and data.is_image and cfg.model.name == "cnn":
            model = model.to(memory_format=torch.channels_last)
            data = data.to_memory_format(torch.channels_last)
        optimizer = build_optimizer(cfg.optim, model)
        sampler = BatchSampler(len(data.x_train), cfg.data.batch_size, seed=cfg.train.seed,
                               classes_per_batch=cfg.data.classes_per_batch, labels=data.y_train)
        training_model, sampler = distributed.prepare(cfg, model, sampler)  # DDP and a shard with nproc > 1
        state = checkpoint.load(checkpoint_path) if resuming and checkpoint_path.exists() else None
        start = state["step"] if state else 0
        if state:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.load_state_dict(state["sampler"])
            checkpoint.set_rng_state(state["rng"])
            record["diverged_at"], record["skipped_steps"] = state["diverged_at"], state["skipped_steps"]
        # On resume, TensorBoard drops records at steps >= start left by the stopped process (no duplicates).
        writer = RunWriter(run_dir, purge_step=start if resuming else None)
        telemetry = Telemetry(model, writer, cfg.log, cfg.train.steps, images)
        if state:
            telemetry.load_state_dict(state["telemetry"])
        else:
            writer.text("config", config_text(record["config"]))
            writer.hparams_start({k: v for k, v in record["config"].items() if k != "resume"}, list(HPARAM_METRICS))
        record["steps"] = start
        log.info("%s %s at step %d of %d on %s; overrides: %s", "resuming" if state else "starting", run_dir, start,
                 cfg.train.steps, device, " ".join(record["overrides"]) or "(none)")
        began = True
        status = "interrupted" if stop.requested else _loop(
            cfg, training_model, optimizer, sampler, data, telemetry, progress, record, start,
            lambda step: _save_checkpoint(run_dir, record, telemetry, _checkpoint_state(
                model, optimizer, sampler, telemetry, step, record)), stop)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; the last checkpoint stands
        status = "interrupted"
    except Exception as error:  # the run failed: keep its records, say why, and let a sweep go on
        status = "failed"
        record["error"] = files.failure_reason(error, run_dir)
        if resuming and not began:
            log.error("resume failed\n%s", traceback.format_exc())
            _close(telemetry, writer)
            raise RunFileError(f"could not resume {run_dir}: {record['error']} (the run is left as it was, "
                               f"status {previous['status']} at step {previous['steps']}; traceback in "
                               f"{run_dir / 'train.log'})") from error
        # the summary first, while the space a failed write has just freed is still there
        _write_summary(run_dir, {**record, "status": status, "finished": _now()}, quiet=True)
        log.error("run failed\n%s", traceback.format_exc())
    finally:
        progress.stop()
        if flushed:
            torch.set_flush_denormal(False)
        torch.set_num_threads(threads)

    record["status"] = status
    record["finished"] = _now()
    log.info("%s after %d/%d steps", status, record["steps"], cfg.train.steps)
    try:
        if telemetry is not None:
            telemetry.close()
            record["metrics"] = as_logged(telemetry.last)
            if telemetry.initial:
                record["figures"] = gradient_figures(telemetry.initial, telemetry.last)
        if writer is not None:
            writer.text("run_card", run_card(record), record["steps"])  # summary.json's numbers, rounded
            writer.hparams_end(status)
    except Exception as error:  # a figure that cannot be drawn, a full disk: the summary still records the run
        log.error("could not write the last telemetry records\n%s", traceback.format_exc())
        if status == "completed" and isinstance(error, OSError):  # its event files are incomplete
            status = record["status"] = "failed"
            record["error"] = files.failure_reason(error, run_dir)
    _close(None, writer)
    _write_summary(run_dir, record, quiet=status == "failed")
    spent = (0.0, 0.0, 0) if telemetry is None else (telemetry.seconds, telemetry.cpu_seconds,
                                                      telemetry.measured_steps)
    return RunResult(run_dir, status, record["steps"], record["metrics"], record["error"], record["diverged_at"],
                     spent[0], spent[1], spent[2])


def _loop(cfg, model, optimizer, sampler, data, telemetry, progress, record, start, save_checkpoint, stop) -> str:
    """The steps from `start` on; `stop` (train's signal handler, installed before the set-up) ends them after
    the current step."""
    # config values read once: an OmegaConf attribute read costs ~40 us, a step of a small model ~3 ms
    total, on_divergence, eval_every = cfg.train.steps, cfg.train.on_divergence, cfg.train.eval_every
    checkpoint_every, l1, grad_clip = cfg.train.checkpoint_every, cfg.optim.l1, cfg.optim.grad_clip
    adaptive_clip = cfg.optim.adaptive_clip
    params = list(model.parameters())
    finite_check = FiniteCheck(data.x_train.device)
    accuracy = None
    on_train_set = cfg.log.train_accuracy

    def loss_of(net, x, y):  # the training objective, which telemetry's opt-in probes evaluate on copies of net
        loss = F.cross_entropy(net(x), y)
        if l1 > 0:
            loss = loss + l1 * sum(layer.weight.abs().sum() for layer in net.weight_layers.values())
        return loss

    progress.start(total, start)
    for step in range(start, total):
        if step % eval_every == 0 and step < total - 1:  # the last step's evaluation follows it
            test_loss, accuracy = evaluate(model, data.x_test, data.y_test)
            telemetry.record(step, {"loss/test": test_loss, "acc/test": accuracy,
                                    **train_accuracy(model, data, on_train_set)})
            log.info("step %d: loss/test %.4g, acc/test %.4f", step, test_loss, accuracy)
        due = telemetry.due(step)
        if due:
            telemetry.start(step)
        indices = sampler.next_indices()
        x, y = data.x_train[indices], data.y_train[indices]
        loss = loss_of(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if adaptive_clip is not None:  # DDP averaged the gradients in backward: every process clips the same ones
            clipping.adaptive_clip_(params, adaptive_clip)
        if due:
            telemetry.observe_step(step, optimizer, loss_of, x, y)
        loss_value, finite = finite_check(loss, [p.grad for p in params if p.grad is not None])  # one sync
        loss, loss_value, finite = distributed.agree(loss, loss_value, finite, stop)  # of all processes
        if finite:
            optimizer.step()
        else:  # a diverged step never reaches the parameters
            record["skipped_steps"] += 1
            if record["diverged_at"] is None:
                record["diverged_at"] = step
        if due:
            telemetry.finish(step, {"loss/train": loss.detach(), "lr": optimizer.param_groups[0]["lr"]})
        record["steps"] = step + 1 if finite or on_divergence == "continue" else step
        progress.update(record["steps"], loss_value, accuracy)
        if not finite and not due:
            telemetry.record(step, {"loss/train": loss_value})
        if not finite and on_divergence == "stop":
            log.warning("loss or gradient is not finite at step %d: stopping (diverged)", step)
            return "diverged"
        if stop.requested:
            log.warning("%s received: stopping after step %d", stop.signal_name, step)
            save_checkpoint(record["steps"])
            return "interrupted"
        if record["steps"] % checkpoint_every == 0 and record["steps"] < total:  # the last one comes below
            save_checkpoint(record["steps"])
    # the trained network's test metrics, logged at the last step as its telemetry is: every series ends there
    test_loss, accuracy = evaluate(model, data.x_test, data.y_test)
    telemetry.record(total - 1, {"loss/test": test_loss, "acc/test": accuracy,
                                 **train_accuracy(model, data, on_train_set)})
    telemetry.render_final(total - 1)
    progress.update(total, None, accuracy)
    figures = gradient_figures(telemetry.initial, telemetry.last) if telemetry.initial else {}
    if figures:
        telemetry.record(total - 1, {f"figures/{name}": value for name, value in figures.items()})
    save_checkpoint(total)
    return "completed"


def _save_checkpoint(run_dir: Path, record: dict, telemetry, state: dict) -> None:
    """Checkpoint, then say in summary.json how far the run got: what a kill -9 after this leaves."""
    checkpoint.save(run_dir / checkpoint.CHECKPOINT_NAME, state)
    record["metrics"] = as_logged(telemetry.last)
    summary.write(run_dir, {**record, "steps": state["step"]})


def _write_summary(run_dir: Path, record: dict, quiet: bool) -> None:
    """summary.json; `quiet` where an earlier write already recorded the failure and a second one may not fit."""
    try:
        summary.write(run_dir, record)
    except RunFileError:
        if not quiet:
            raise
        log.error("could not update summary.json\n%s", traceback.format_exc())


def _close(telemetry, writer) -> None:
    for closable in (telemetry, writer):
        try:
            if closable is not None:
                closable.close()
        except Exception:  # already failing: the error that matters is recorded
            log.error("could not close the event files\n%s", traceback.format_exc())


def _checkpoint_state(model, optimizer, sampler, telemetry, step: int, record: dict) -> dict:
    return {
        "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict(), "telemetry": telemetry.state_dict(), "rng": checkpoint.rng_state(),
        "diverged_at": record["diverged_at"], "skipped_steps": record["skipped_steps"],
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

