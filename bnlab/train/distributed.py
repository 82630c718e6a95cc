"""Training in several processes (`train.nproc=N`): the launch, and the three hooks the loop calls.

`bnlab train train.nproc=N` runs its Hydra job as usual: the job claims the run directory, starts N
processes with torch's elastic launcher (`python -m torch.distributed.run --standalone`, each process
running `bnlab.train.worker`) and waits for them. Every process trains the same model on its 1/N of
each global batch (`data.batch_size` stays the global batch): DistributedDataParallel averages the
gradients, and with `norm.sync=true` bnlab's BatchNorm normalizes with the statistics of the global
batch, so that the processes take the steps one process would take on the whole batch. Process 0
writes the run directory (telemetry, checkpoints, summary.json); the others train into scratch
directories that go away with the run.

After every step the processes agree (one all-reduce): the mean loss, whether every process's step was
finite, and whether any was asked to stop, so that divergence and Ctrl-C stop them all after the same
step. A signal to the job goes once to the launcher, which passes it once to each process. A process
that fails ends the run as failed: its peers' next collective fails at once when its process exits, or
after TIMEOUT if it hangs; the launcher ends the rest, and the job records every process's error.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from bnlab.errors import RunFileError
from bnlab.nn.batchnorm import convert_sync_batchnorm
from bnlab.train import checkpoint, summary

# How long a process waits in a collective for a peer that neither arrives nor exits. Long enough for
# process 0's evaluations, checkpoints and last images, which the others wait for at their next step.
TIMEOUT = timedelta(minutes=5)
SPEC_NAME = "spec.json"  # what the job hands its processes, in the scratch directory


def is_launcher(cfg) -> bool:
    """Whether this process starts a train.nproc > 1 run rather than training itself."""
    return cfg.train.nproc > 1 and not _active()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ShardedSampler:
    """This process's share of each global batch that `sampler` draws; its state is the global sampler's."""

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def next_indices(self) -> torch.Tensor:
        indices = self.sampler.next_indices()  # (batch_size,) the same on every process
        share = len(indices) // self.world_size
        return indices[self.rank * share:(self.rank + 1) * share]  # (batch_size / world_size,)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class TrainingModel(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that still shows the loop the network's weight layers."""

    @property
    def weight_layers(self):
        return self.module.weight_layers


def prepare(cfg, model: torch.nn.Module, sampler):
    """(the model to train, the sampler to draw from) for this process.

    In a train.nproc > 1 process: the model in DistributedDataParallel, its BatchNorm synchronized where
    norm.sync asks, and this process's share of every batch. In one process: both as they are.
    """
    if not _active():
        return model, sampler
    if cfg.norm.sync:
        convert_sync_batchnorm(model)
    # Running statistics are kept by each process (the same ones with norm.sync): no buffer broadcast
    # before each forward, which would also make evaluation a collective.
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})  # torch < 2.13
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    training = TrainingModel(model, device_ids=device_ids, **no_buffer_sync)
    return training, ShardedSampler(sampler, dist.get_rank(), dist.get_world_size())


def agree(loss: torch.Tensor, loss_value: float, finite: bool, stop) -> tuple[torch.Tensor, float, bool]:
    """(loss, loss_value, finite) of the global batch after a step, with stop.requested set if any process
    was asked to stop. In one process: as given."""
    if not _active():
        return loss, loss_value, finite
    local = [loss_value if finite else 0.0, 0.0 if finite else 1.0, 1.0 if stop.requested else 0.0]
    flags = torch.tensor(local, dtype=torch.float64, device=loss.device)
    dist.all_reduce(flags)
    loss_sum, not_finite, stopping = flags.tolist()
    if stopping and not stop.requested:
        stop.requested, stop.signal_name = True, "a stop request to another process"
    finite = not_finite == 0
    loss_value = loss_sum / dist.get_world_size() if finite else float("nan")
    return loss.detach().new_tensor(loss_value), loss_value, finite


def launch(cfg, run_dir: Path, record: dict, progress=None) -> dict:
    """Train the run in cfg.train.nproc processes and wait for them; returns RunResult's fields.

    `record` is the run's summary as the job claimed (or resumed) it; where `progress` is a progress bar
    (with a description), process 0 shows one like it.
    """
    run_dir = Path(run_dir)
    problem = _device_problem(cfg)
    if problem is None:
        with tempfile.TemporaryDirectory(prefix="bnlab-nproc-") as scratch:
            config = OmegaConf.to_container(cfg, resolve=True)
            config["resume"] = str(run_dir)  # the job holds the directory: process 0 continues it
            spec = {"config": config, "overrides": record["overrides"], "run_dir": str(run_dir),
                    "progress": getattr(progress, "description", None)}
            Path(scratch, SPEC_NAME).write_text(json.dumps(spec))
            returncode, signalled = _run_processes(cfg, Path(scratch))
            errors = _process_errors(Path(scratch), cfg.train.nproc)
    else:
        returncode, signalled, errors = None, False, [problem]
    try:
        final = summary.read(run_dir)
    except RunFileError:
        final = dict(record)
    errors = [error for error in errors if error]
    if final["status"] == "running":  # process 0 ended before it could write the outcome
        final["status"] = "interrupted" if signalled else "failed"
        final["error"] = "; ".join(errors) or (f"the training processes ended (exit code {returncode}) before "
                                               "process 0 wrote the outcome; see the log above")
        final["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary.write(run_dir, final)
    elif final["status"] == "failed" and errors:  # every process's own words, the first cause among them
        final["error"] = "; ".join(errors)
        summary.write(run_dir, final)
    return {"status": final["status"], "steps": final["steps"], "metrics": final.get("metrics", {}),
            "error": final.get("error"), "diverged_at": final.get("diverged_at")}


def _device_problem(cfg) -> str | None:
    on_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.device_count() < cfg.train.nproc:
        return (f"ConfigError: train.nproc={cfg.train.nproc} needs one GPU per process, but "
                f"{torch.cuda.device_count()} are visible; use train.nproc={torch.cuda.device_count()} or "
                "train.device=cpu")
    return None


def _run_processes(cfg, scratch: Path) -> tuple[int, bool]:
    """(exit code of torch.distributed.run, whether this job passed it a signal)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={cfg.train.nproc}", "--max-restarts=0", "--monitor-interval=0.5",
               "--local-addr=127.0.0.1", "-m", "bnlab.train.worker", str(scratch)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cfg.train.threads or 1))
    env.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())  # one machine: gloo talks over loopback
    # Its own session: a Ctrl-C in the terminal reaches the launcher once, from this job, not twice.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    with _forward_signals(process) as received:
        returncode = process.wait()
    return returncode, bool(received)


@contextmanager
def _forward_signals(process: subprocess.Popen):
    """Pass SIGINT/SIGTERM on to `process` while it runs; yields the list of signals passed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum, frame):
        received.append(signum)
        if process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loopback_interface() -> str:
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def _process_errors(scratch: Path, nproc: int) -> list[str]:
    """Each process's error, those that ended without a word first: the likely cause of the others'."""
    outcomes = [scratch / f"rank{rank}.json" for rank in range(nproc)]
    silent = [f"process {rank}: ended without an outcome (killed or crashed; see the log above)"
              for rank, path in enumerate(outcomes) if not path.exists()]
    said = [json.loads(path.read_text()) for path in outcomes if path.exists()]
    return silent + [f"process {outcome['rank']}: {outcome['error']}" for outcome in said if outcome["error"]]


def scratch_run_dir(scratch: Path, rank: int, run_dir: Path) -> Path:
    """Where process `rank` > 0 trains: a copy of the run's state in the scratch directory, so that it
    resumes from process 0's checkpoint and writes nothing into the run directory."""
    own = scratch / f"rank{rank}"
    own.mkdir()
    if (run_dir / summary.SUMMARY_NAME).exists():
        shutil.copy(run_dir / summary.SUMMARY_NAME, own / summary.SUMMARY_NAME)
    if (run_dir / checkpoint.CHECKPOINT_NAME).exists():
        # A link: its own checkpoints replace the link, never process 0's file.
        (own / checkpoint.CHECKPOINT_NAME).symlink_to((run_dir / checkpoint.CHECKPOINT_NAME).resolve())
    return own
