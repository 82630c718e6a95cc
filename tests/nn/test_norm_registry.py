"""The norm registry: names map to the right layers, kwargs reach them, bad names are explained."""

import pytest
import torch

import bnlab.nn
from bnlab.nn import NORMS, BatchNorm1d, BatchNorm2d, create_norm


def test_exports():
    assert set(bnlab.nn.__all__) == {"BatchNorm1d", "BatchNorm2d", "NORMS", "create_norm"}
    assert set(NORMS) == {"none", "bnlab", "torch"}


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
    assert "'bnlb'" in message and "bnlab, none, torch" in message and "did you mean 'bnlab'?" in message


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(ValueError, match=r"valid names are bnlab, none, torch$"):
        create_norm("layernorm", 6)


def test_bad_dim_is_a_value_error():
    with pytest.raises(ValueError, match=r"got dim=3"):
        create_norm("bnlab", 6, dim=3)
