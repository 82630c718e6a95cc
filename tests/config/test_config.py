"""Config composition from the real configs/, the typed schema, and validation messages."""

from __future__ import annotations

import pytest
from conftest import compose

from bnlab.errors import ConfigError, DataError


def test_default_config_is_the_deep_sigmoid_mlp_with_bnlab_batchnorm_on_digits():
    cfg = compose()
    assert (cfg.model.name, cfg.model.depth, cfg.model.activation) == ("mlp", 20, "sigmoid")
    assert (cfg.norm.name, cfg.norm.position, cfg.data.name, cfg.optim.name) == ("bnlab", "before_act", "digits", "sgd")
    assert cfg.log.enabled and cfg.log.every == 50 and cfg.train.device == "auto"


@pytest.mark.parametrize("group,choice", [("model", "mlp"), ("model", "cnn"), ("norm", "none"), ("norm", "bnlab"),
                                          ("norm", "torch"), ("data", "digits"), ("data", "mnist1d"),
                                          ("data", "synthetic"), ("optim", "sgd"), ("optim", "adam")])
def test_every_offline_group_choice_composes(group, choice):
    overrides = [f"{group}={choice}"] + (["model=mlp"] if choice in ("mnist1d", "synthetic") else [])
    cfg = compose(*overrides)
    assert cfg[group].name == choice


def test_overrides_reach_the_canonical_keys():
    cfg = compose("model.depth=7", "model.width=33", "model.activation=tanh", "model.init=xavier",
                  "model.residual=true", "norm.eps=0.001", "norm.momentum=null", "norm.position=after_act",
                  "data.batch_size=10", "optim=adam", "optim.lr=0.01", "optim.weight_decay=0.1", "optim.l1=0.001",
                  "optim.grad_clip=1.0", "train.steps=5", "train.seed=3", "train.device=cpu", "train.eval_every=2",
                  "log.enabled=false", "log.every=3", "log.hist_every=9")
    assert cfg.model.depth == 7 and cfg.model.width == 33 and cfg.model.residual is True
    assert cfg.norm.momentum is None and cfg.norm.position == "after_act" and cfg.norm.eps == 0.001
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.01 and cfg.optim.grad_clip == 1.0
    assert cfg.train.seed == 3 and cfg.log.enabled is False and cfg.log.hist_every == 9


@pytest.mark.parametrize("override,expected", [
    ("norm=bnn", ["norm=bnn", "bnlab, ghost, group, layer, noisy, none, renorm, torch"]),
    ("model.dept=3", ["model.dept", "model.depth"]),
    ("nrm.eps=1", ["nrm", "norm"]),
    ("model.depth=abc", ["model.depth=abc", "integer"]),
    ("optim.lr=fast", ["optim.lr=fast", "number"]),
    ("model.depth=0", ["model.depth=0", ">= 1"]),
    ("model.depth=-2", ["model.depth=-2", ">= 1"]),
    ("model.width=0", ["model.width=0", ">= 1"]),
    ("data.batch_size=0", ["data.batch_size=0", ">= 1"]),
    ("data.batch_size=1", ["data.batch_size=1", "BatchNorm", "norm=none"]),
    ("optim.lr=0", ["optim.lr=0", "> 0"]),
    ("optim.lr=-1", ["optim.lr=-1", "> 0"]),
    ("log.every=0", ["log.every=0", ">= 1"]),
    ("model.activation=sigmod", ["sigmod", "did you mean 'sigmoid'"]),
    ("model.init=glorot", ["model.init='glorot'", "xavier"]),
    ("norm.position=before", ["norm.position", "before_act"]),
    ("train.on_divergence=ignore", ["train.on_divergence", "stop, continue"]),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as error:
        compose(override)
    for fragment in expected:
        assert fragment in str(error.value)


def test_a_cnn_on_data_without_image_shape_is_refused():
    with pytest.raises(ConfigError, match="model=cnn needs images, but data=mnist1d"):
        compose("model=cnn", "data=mnist1d")


def test_batch_size_one_is_fine_without_batchnorm():
    assert compose("norm=none", "data.batch_size=1").data.batch_size == 1


def test_missing_dataset_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as error:  # raised at compose time, before any work; exit code 2
        compose("data=mnist", f"data.root={tmp_path}")
    assert str(tmp_path / "mnist") in str(error.value) and "data.download=true" in str(error.value)
    assert error.value.exit_code == 2


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path cannot be reached")
    with pytest.raises(ConfigError, match="train.device=cuda"):
        compose("train.device=cuda")


def test_sweep_points_are_each_validated():
    from bnlab.config.launch import check_overrides

    check_overrides(["norm=none,bnlab", "train.seed=0,1"])
    with pytest.raises(ConfigError, match="norm=bn is not a choice"):
        check_overrides(["norm=none,bnlab,bn"])
    with pytest.raises(ConfigError, match="model.depth=0"):
        check_overrides(["model.depth=3,0"])
