"""The norm registry: names map to the right layers, kwargs reach them, bad names are explained, and
the list of names is declared once (bnlab.nn.names), readable without torch."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import bnlab.nn
from bnlab.config.schema import NormConfig
from bnlab.nn import NORMS, BatchNorm1d, BatchNorm2d, create_norm
from bnlab.nn.names import BATCH_NORMS, NORM_NAMES, NORM_OPTIONS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "norm"


def test_exports():
    assert set(bnlab.nn.__all__) == {"BatchNorm1d", "BatchNorm2d", "GhostBatchNorm1d", "GhostBatchNorm2d",
                                     "BatchRenorm1d", "BatchRenorm2d", "NoisyBatchNorm1d", "NoisyBatchNorm2d",
                                     "GroupNorm", "LayerNorm", "NORMS", "create_norm"}
    assert all(getattr(bnlab.nn, name) is not None for name in bnlab.nn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Batchnorm1d'"):
        bnlab.nn.Batchnorm1d  # noqa: B018


def test_one_list_of_names_for_registry_schema_options_and_config_files():
    assert tuple(NORMS) == NORM_NAMES and set(NORM_OPTIONS) == set(NORM_NAMES) and set(BATCH_NORMS) < set(NORMS)
    assert sorted(path.stem for path in CONFIGS.glob("*.yaml")) == sorted(NORM_NAMES)
    fields = {field.name for field in dataclasses.fields(NormConfig)}
    for name in NORM_NAMES:
        options = set(NORM_OPTIONS[name])
        assert options <= fields, name
        assert options <= set(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())), name  # one line a knob


def test_names_and_schema_import_without_torch():
    code = "import sys, bnlab.nn.names, bnlab.config.schema; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", [n for n in NORM_NAMES if n != "none"])
@pytest.mark.parametrize("dim, shape", [(1, (8, 16)), (2, (8, 16, 3, 3))])
def test_every_norm_builds_from_the_config_keys_it_reads(name, dim, shape):
    defaults = NormConfig(ghost_batch_size=4, groups=4)
    options = {key: getattr(defaults, key) for key in NORM_OPTIONS[name]}
    layer = create_norm(name, 16, dim=dim, **options)
    assert layer(torch.randn(shape)).shape == shape
    assert layer.eps == defaults.eps
    for key, attribute in (("ghost_batch_size", "ghost_batch_size"), ("groups", "num_groups"), ("rmax", "rmax"),
                           ("noise_std", "noise_std"), ("warmup_steps", "warmup_steps"), ("momentum", "momentum")):
        if key in options:
            assert getattr(layer, attribute) == options[key]


@pytest.mark.parametrize("dim, shape", [(1, (6, 8)), (2, (4, 8, 3, 3))])
def test_torch_layer_and_group_arms_compute_what_bnlabs_layers_compute(dim, shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    for ours, reference in (("layer", "torch_layer"), ("group", "torch_group")):
        options = {"groups": 4} if ours == "group" else {}
        bnlab_layer = create_norm(ours, 8, dim=dim, **options).double()
        torch_layer = create_norm(reference, 8, dim=dim, **options).double()
        with torch.no_grad():
            torch_layer.weight.uniform_(0.5, 1.5)
            torch_layer.bias.normal_()
        bnlab_layer.load_state_dict(torch_layer.state_dict())
        torch.testing.assert_close(bnlab_layer(x), torch_layer(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name, dim, expected", [
    ("bnlab", 1, BatchNorm1d), ("bnlab", 2, BatchNorm2d),
    ("torch", 1, torch.nn.BatchNorm1d), ("torch", 2, torch.nn.BatchNorm2d),
    ("none", 1, torch.nn.Identity), ("none", 2, torch.nn.Identity),
])
def test_create_norm_builds_the_named_layer(name, dim, expected):
    layer = create_norm(name, 6, dim=dim)
    assert type(layer) is expected
    if name != "none":
        assert layer.num_features == 6


def test_default_dim_is_1d_and_kwargs_reach_the_layer():
    layer = create_norm("bnlab", 6, momentum=None, affine=False, eps=1e-3)
    assert isinstance(layer, BatchNorm1d)
    assert layer.momentum is None and layer.weight is None and layer.eps == 1e-3
    reference = create_norm("torch", 6, dim=2, track_running_stats=False)
    assert reference.running_mean is None


def test_none_passes_input_through():
    x = torch.randn(3, 6)
    assert torch.equal(create_norm("none", 6)(x), x)


def test_unknown_name_lists_valid_names_and_suggests_close_match():
    with pytest.raises(ValueError) as error:
        create_norm("bnlb", 6)
    message = str(error.value)
    assert "'bnlb'" in message and "bnlab, ghost, group, layer, noisy, none" in message
    assert "did you mean 'bnlab'?" in message


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(ValueError, match=r"valid names are bnlab, .*, torch_layer$"):
        create_norm("instance", 6)


def test_bad_dim_is_a_value_error():
    with pytest.raises(ValueError, match=r"got dim=3"):
        create_norm("bnlab", 6, dim=3)
