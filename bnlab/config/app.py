"""Hydra's entry point for one training job: `bnlab train` hands its arguments here.

Because this is a real `@hydra.main`, everything Hydra users know works unchanged:
overrides, `-m` sweeps, launchers and sweepers, `hydra.run.dir=...`, `--cfg job`.
Each job returns normally whatever happens to its run (so a sweep goes on); the
outcome is kept in `RESULTS` for the CLI of the same process, and in summary.json.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import secrets
import threading
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from bnlab.config.schema import register_schema, validate
from bnlab.errors import BnlabError

CONFIG_DIR = importlib.util.find_spec("bnlab.conf").submodule_search_locations[0]
# Hydra forces these two module globals: `@hydra.main` takes no arguments but the config and its launchers drop
# the task function's return value, so the jobs of this process hand their outcome back, and receive the sweep's
# progress line, through the module (launch.run_hydra clears and reads them around each call).
RESULTS: list = []  # RunResult of each job run in this process, or the BnlabError that kept it from running
SWEEP_PROGRESS = None  # a sweep's one line (bnlab.train.progress.SweepProgress), set by launch.run_hydra

register_schema()
# A short random token in directory names keeps runs started in the same second apart.
OmegaConf.register_new_resolver("bnlab_uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)


def job_dirname(overrides: str, limit: int = 120) -> str:
    """Hydra's override_dirname made safe as one path component: no '/', and at most `limit` characters."""
    name = overrides.replace("/", "_").replace(" ", "") or "default"
    if len(name) > limit:
        name = name[:limit - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


OmegaConf.register_new_resolver("bnlab_dirname", job_dirname, replace=True)


def run_job(cfg) -> str:
    """One job of `main`: train the run `cfg` describes, in Hydra's job directory. A module-level function, so
    that a launcher running jobs in other processes (joblib's) pickles it by name, not with this process's state."""
    from bnlab.telemetry.images import ImageLog
    from bnlab.train.loop import train
    from bnlab.train.progress import RichProgress

    validate(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")]
    single = hydra_cfg.mode == RunMode.RUN
    in_process = hydra_cfg.launcher.get("_target_", "").endswith("BasicLauncher")  # not joblib's workers
    if single:
        progress = RichProgress("train")
    elif in_process and SWEEP_PROGRESS is not None:
        progress = SWEEP_PROGRESS.job(overrides)
    else:
        progress = RichProgress(f"job {hydra_cfg.job.num}") if in_process else None
    images = ImageLog(cfg) if cfg.log.enabled and cfg.log.images else None
    quiet_file_errors()
    try:
        result = train(cfg, run_dir, overrides, progress=progress, images=images)
    except BnlabError as error:  # e.g. the directory belongs to another run: nothing was started
        RESULTS.append(error)
        return "failed"
    except Exception as error:  # a fault outside the run's own handling: still one line, the traceback logged
        logging.getLogger(__name__).error("job failed\n%s", traceback.format_exc())
        text = str(error).strip().splitlines()
        RESULTS.append(BnlabError(f"{type(error).__name__}: {text[0] if text else ''} (traceback in "
                                  f"{run_dir / 'train.log'})"))
        return "failed"
    RESULTS.append(result)
    if result.status == "interrupted":
        raise KeyboardInterrupt  # the user asked to stop: end the whole sweep, not just this job
    return result.status


main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(run_job)


def quiet_file_errors() -> None:
    """Report a full disk once, as the run's error, not as tracebacks from every writer that notices it.

    The log file's handler would print "--- Logging error ---" and a traceback per record, and
    TensorBoard's writer thread its own traceback; the training thread receives the same error from
    the writer at its next call and records the run as failed with one line that names the file.
    """
    logging.raiseExceptions = False
    if threading.excepthook is not _quiet_writer_thread:
        _quiet_writer_thread.default = threading.excepthook
        threading.excepthook = _quiet_writer_thread


def _quiet_writer_thread(args) -> None:
    if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _quiet_writer_thread.default(args)
