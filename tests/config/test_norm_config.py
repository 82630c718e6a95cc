"""The config keys of ghost, renorm, noisy and group norm: composed from the real configs, each checked for
range (NaN refused) at compose time, and the sizes that must fit together named with their fix."""

from __future__ import annotations

import pytest
from conftest import compose

from bnlab.errors import ConfigError


@pytest.mark.parametrize("norm, keys", [
    ("ghost", {"ghost_batch_size": 32}),
    ("renorm", {"rmax": 3.0, "dmax": 5.0, "warmup_steps": 50, "rmax_step": 400, "dmax_step": 250}),
    ("noisy", {"noise_mean": 0.5, "noise_std": 1.5}),
    ("group", {"groups": 8}),
    ("torch_group", {"groups": 8}),
    ("layer", {}),
    ("torch_layer", {}),
])
def test_each_norm_composes_with_its_defaults(norm, keys):
    cfg = compose(f"norm={norm}")
    assert cfg.norm.name == norm and cfg.norm.position == "before_act"
    assert {key: cfg.norm[key] for key in keys} == keys


@pytest.mark.parametrize("override, fragment", [
    ("norm.ghost_batch_size=0", "norm.ghost_batch_size=0 is out of range; expected a value >= 1"),
    ("norm.rmax=0.5", "norm.rmax=0.5 is out of range; expected a finite value >= 1"),
    ("norm.rmax=nan", "norm.rmax=nan is not a finite number"),
    ("norm.dmax=-1", "norm.dmax=-1.0 is out of range; expected a finite value >= 0"),
    ("norm.dmax=inf", "norm.dmax=inf is not a finite number"),
    ("norm.warmup_steps=-1", "norm.warmup_steps=-1 is out of range; expected a value >= 0"),
    ("norm.warmup_steps=300", "norm.dmax_step=250 comes before the warm-up ends (norm.warmup_steps=300)"),
    ("norm.rmax_step=10", "norm.rmax_step=10 comes before the warm-up ends"),
    ("norm.noise_mean=-0.5", "norm.noise_mean=-0.5 is out of range; expected a finite value >= 0"),
    ("norm.noise_mean=nan", "norm.noise_mean=nan is not a finite number"),
    ("norm.noise_std=0.9", "norm.noise_std=0.9 is out of range; expected a finite value >= 1"),
    ("norm.groups=0", "norm.groups=0 is out of range; expected a value >= 1"),
])
def test_out_of_range_values_are_refused_whichever_norm_runs(override, fragment):
    for norm in ("bnlab", "renorm"):
        with pytest.raises(ConfigError) as error:
            compose(f"norm={norm}", override)
        assert fragment in str(error.value)


def test_sizes_that_must_fit_together_name_the_keys_and_the_fix():
    with pytest.raises(ConfigError, match=r"data.batch_size=64 is not a multiple of norm.ghost_batch_size=48; "
                                          r"use a batch size that is a multiple of 48"):
        compose("norm=ghost", "norm.ghost_batch_size=48")
    assert compose("norm=ghost", "norm.ghost_batch_size=16").norm.ghost_batch_size == 16
    assert compose("norm=bnlab", "norm.ghost_batch_size=48").norm.name == "bnlab"  # only ghost reads it
    with pytest.raises(ConfigError, match="norm.ghost_batch_size=1 leaves one value per unit"):
        compose("norm=ghost", "norm.ghost_batch_size=1")
    assert compose("norm=ghost", "model=cnn", "norm.ghost_batch_size=1").norm.ghost_batch_size == 1
    with pytest.raises(ConfigError, match=r"model.width=128 is not a multiple of norm.groups=48; use a number of "
                                          r"groups that divides 128"):
        compose("norm=group", "norm.groups=48")
    with pytest.raises(ConfigError, match=r"model.width=20 is not a multiple of norm.groups=8"):
        compose("norm=torch_group", "model.width=20")


def test_batch_size_one_is_refused_only_for_the_norms_with_batch_statistics():
    for norm in ("bnlab", "ghost", "renorm", "noisy", "torch"):
        with pytest.raises(ConfigError, match="data.batch_size=1 is too small"):
            compose(f"norm={norm}", "model=cnn", "data.batch_size=1", "norm.ghost_batch_size=1")
    for norm in ("layer", "group", "torch_layer", "torch_group", "none"):
        assert compose(f"norm={norm}", "data.batch_size=1").data.batch_size == 1
