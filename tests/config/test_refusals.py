"""Bad input is refused before any work: exit 2, one line naming the key and the fix, no traceback, no run
directory. Interpolations, NaN and infinities, out-of-range seeds, keys added with `+`, batches larger than the
data set, ports that do not exist, and models too large for this machine."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from conftest import TINY, compose, run_bnlab

from bnlab.config.schema import Config
from bnlab.errors import ConfigError


def _refused(result, *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", ["train", "show-config"])
@pytest.mark.parametrize("value,fragment", [
    ("${oc.env:HOME}", "could not be converted to Integer"),
    ("${nope.nothing}", "Interpolation key 'nope.nothing' not found"),
    ("${model.depth}", "Recursive interpolation"),
    ("${unknown_resolver:1}", "Unsupported interpolation type unknown_resolver"),
])
def test_a_bad_interpolation_is_one_line_naming_the_key(tmp_path, command, value, fragment):
    result = run_bnlab(command, *TINY, f"model.depth={value}", cwd=tmp_path)
    _refused(result, f"model.depth={value}", "cannot be resolved", fragment)
    assert not (tmp_path / "runs").exists()


def test_a_good_interpolation_still_works():
    assert compose(*TINY, "model.width=${model.depth}").model.width == 3


def _float_keys(schema=Config, prefix=""):
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            yield from _float_keys(hint, f"{prefix}{name}.")
        elif float in (typing.get_args(hint) or (hint,)):
            yield f"{prefix}{name}"


FLOAT_KEYS = sorted(_float_keys())


def test_the_schema_has_the_float_keys_the_issue_names():
    assert {"optim.lr", "norm.eps", "norm.momentum", "optim.weight_decay", "optim.grad_clip",
            "model.init_std", "optim.l1", "optim.momentum"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_key_refuses_nan_and_infinities(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}={value} is not a finite number"):
        compose(*TINY, f"{key}={value}")


@pytest.mark.parametrize("override,fragment", [
    ("optim.lr=nan", "optim.lr=nan is not a finite number"),
    ("norm.eps=nan", "norm.eps=nan is not a finite number"),
    ("train.seed=-1", "train.seed=-1 is out of range; expected 0 <= train.seed < 2**32"),
    ("train.seed=4294967296", "train.seed=4294967296 is out of range"),
    ("+model.dept=30", "unknown key 'model.dept'"),
    ("+model.dept=30", "did you mean 'model.depth'?"),
    ("+nonsense=1", "unknown key 'nonsense'"),
    ("data.batch_size=1439", "data.batch_size=1439 is larger than the 1438 training samples of data=digits"),
    ("data=synthetic data.samples=100 data.batch_size=81", "use data.batch_size=80 or less"),
    ("model.depth=100000 model.width=100000", "reduce model.depth, model.width or data.batch_size"),
    ("model=cnn model.depth=1000000000000", "model.depth=1000000000000 model.width=16"),
])
def test_bad_values_are_refused_up_front(tmp_path, override, fragment):
    result = run_bnlab("train", *TINY, *override.split(), cwd=tmp_path, timeout=120)
    _refused(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_the_largest_batch_the_data_set_holds_is_accepted():
    assert compose(*TINY, "data.batch_size=1438").data.batch_size == 1438


def test_a_model_too_large_for_this_machine_names_its_size_and_the_memory_left(tmp_path):
    line = _refused(run_bnlab("train", "model.depth=100000", "model.width=100000", cwd=tmp_path, timeout=120),
                    "model.depth=100000", "model.width=100000", "parameters", "TB", "available")
    assert "1e+15 parameters" in line  # 100000 layers of 100000 x 100000 weights


def test_a_port_that_does_not_exist_is_refused(tmp_path):
    line = _refused(run_bnlab("tb", str(tmp_path), "--port", "99999"), "--port 99999 is not a TCP port")
    assert "65535" in line  # the message says what is allowed
