"""Building and loading bnlab's compiled statistics: the cache, a missing compiler, parallel first runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from bnlab.nn.kernels import build
from bnlab.telemetry import native
from bnlab.telemetry.statistics import summaries


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty build cache and no library loaded yet (restored afterwards)."""
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    build._load.cache_clear()
    yield tmp_path / "cache"
    build._load.cache_clear()


def test_the_library_is_built_once_into_the_cache_and_reused(fresh):
    library = native.library()
    assert library is not None
    built = list(fresh.glob("bnlab-*.so"))
    assert len(built) == 1 and library._name == str(built[0])
    stamp = built[0].stat().st_mtime_ns
    build._load.cache_clear()
    assert native.library()._name == str(built[0]) and built[0].stat().st_mtime_ns == stamp
    fingerprint = built[0].with_name(built[0].name + ".sha256")  # its size and hash, checked before each load
    assert sorted(fresh.iterdir()) == [built[0], fingerprint]  # no partial files left behind


def test_without_a_working_compiler_the_pytorch_path_measures_and_a_warning_says_why(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    x = torch.randn(3, 100)
    with caplog.at_level(logging.WARNING):
        assert native.library() is None
        assert not native.handles([x])
        got = summaries([x])
    assert "could not build rowstats.cpp" in caplog.text and "slower PyTorch path" in caplog.text
    assert got[0, 4].item() == pytest.approx(x.double().mean().item(), rel=1e-12)
    assert not fresh.exists() or not list(fresh.glob("*.so"))


def test_runs_starting_together_build_without_reading_each_other_s_half_written_file(fresh):
    code = ("from bnlab.telemetry import native; import torch; "
            "print(native.StepStatistics([torch.ones(100)], [], [], [], [], [], 0, 'relu', "
            "(('grad_norm', None, 0),), 1).values[0])")
    env = {"BNLAB_CACHE_DIR": str(fresh)}
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env}) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and out.strip() == "10.0", err
    assert len(list(fresh.glob("bnlab-*.so"))) == 1 and not list(fresh.glob("*.partial"))


def test_a_compiler_refusing_march_native_gets_the_portable_build(fresh, tmp_path, monkeypatch):
    wrapper = tmp_path / "picky-c++"
    wrapper.write_text('#!/bin/sh\ncase "$*" in *-march=native*) echo "no -march=native here" >&2; exit 1;; esac\n'
                       'exec g++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    assert native.library() is not None
    assert len(list(fresh.glob("bnlab-*.so"))) == 1
    x = torch.randn(1000)
    norm = native.StepStatistics([x], [], [], [], [], [], 0, "relu", (("grad_norm", None, 0),), 1).values[0]
    assert norm == pytest.approx(x.double().norm().item(), rel=1e-12)
