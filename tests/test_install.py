"""A non-editable install (`pip install .`) into a fresh virtual environment works, configs included."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_dot_into_a_fresh_venv_runs_bnlab_train(tmp_path):
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(fresh)
    python = fresh / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Reuse this environment's third-party packages (torch is large) but not its editable bnlab: a path added
    # by a .pth file is not a site directory, so the editable finder's own .pth there is never run.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build = subprocess.run([python, "-m", "pip", "install", "--no-deps", str(REPO)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr

    where = subprocess.run([python, "-c", "import bnlab, bnlab.config.app as t; print(bnlab.__file__); "
                            "print(t.CONFIG_DIR)"], capture_output=True, text=True, cwd=tmp_path, check=True)
    module_file, config_dir = where.stdout.split()
    assert module_file.startswith(site) and config_dir.startswith(site)  # the installed copy, not the repo
    assert (Path(config_dir) / "train.yaml").is_file() and (Path(config_dir) / "hydra/job_logging/bnlab.yaml").is_file()
    assert (Path(module_file).parent / "data" / "digits.csv.gz").is_file()
    # the compiled statistics' source ships too, and builds from the installed copy (into a fresh cache)
    cache = {**os.environ, "BNLAB_CACHE_DIR": str(tmp_path / "cache")}
    built = subprocess.run([python, "-c", "from bnlab.telemetry import native; print(native.library()._name)"],
                           capture_output=True, text=True, cwd=tmp_path, env=cache)
    assert built.returncode == 0 and built.stdout.startswith(str(tmp_path / "cache")), built.stdout + built.stderr

    run_dir = tmp_path / "run"
    result = subprocess.run([fresh / "bin" / "bnlab", "train", *TINY, "model=cnn", f"hydra.run.dir={run_dir}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
