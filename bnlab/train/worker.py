"""One process of a `train.nproc=N` run: `python -m bnlab.train.worker SCRATCH`, started by
torch.distributed.run (bnlab.train.distributed.launch), which sets RANK, LOCAL_RANK and the rendezvous.

It joins the process group (gloo on the CPU, nccl with one GPU per process), then trains with the
ordinary loop: process 0 into the run directory, the others into scratch directories. Its outcome
goes to SCRATCH/rank<R>.json for the job; a failed run still exits 0, so that its peers fail at their
next collective and write their own outcome, rather than being ended by the launcher mid-write.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from bnlab.train import distributed
from bnlab.train.loop import resolve_device, train


def main(argv: list[str] | None = None) -> int:
    scratch = Path((argv if argv is not None else sys.argv[1:])[0])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO, format=f"[process {rank}] %(levelname)s %(name)s: %(message)s")
    outcome = {"rank": rank, "status": "failed", "error": None}
    try:
        spec = json.loads((scratch / distributed.SPEC_NAME).read_text())
        cfg = OmegaConf.create(spec["config"])
        on_gpu = resolve_device(cfg.train.device).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=distributed.TIMEOUT)
        run_dir, images, progress = Path(spec["run_dir"]), None, None
        if rank == 0:
            from bnlab.telemetry.images import ImageLog
            from bnlab.train.progress import RichProgress

            images = ImageLog(cfg) if cfg.log.enabled and cfg.log.images else None
            if spec["progress"]:
                progress = RichProgress(f"{spec['progress']} ({dist.get_world_size()} processes)")
        else:
            run_dir = distributed.scratch_run_dir(scratch, rank, run_dir)
            cfg.log.enabled = False  # telemetry is process 0's
        # the launching process holds the run directory's lock for all its processes
        result = train(cfg, run_dir, spec["overrides"], progress=progress, images=images, hold_lock=False)
        outcome.update(status=result.status, error=result.error)
    except Exception as error:  # e.g. the rendezvous failed: nothing was trained
        outcome["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        (scratch / f"rank{rank}.json").write_text(json.dumps(outcome))
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
