"""Hydra's composition errors, restated: the key, the value, what is allowed, a close match.

Hydra's own messages are correct but long and generic ("Could not override
'model.dept'... Key 'dept' not in 'ModelConfig'"). This module finds the override
at fault by checking each one against the schema and the config folders, and says
what to type instead.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from bnlab.config.schema import Config, close_match
from bnlab.errors import ConfigError

LAUNCHER_EXTRA = "pip install 'bnlab[sweep]'"


def group_options(config_dir: str, group: str) -> list[str]:
    """The choices of one of bnlab's config groups: the YAML files in its folder."""
    return sorted(p.stem for p in Path(config_dir, group).glob("*.yaml"))


def explain_compose_error(error: Exception, overrides: list[str], config_dir: str) -> ConfigError:
    for override in overrides:
        problem = _check_override(override, config_dir)
        if problem:
            return ConfigError(problem)
    text = str(error).strip().splitlines()
    return ConfigError(f"invalid overrides {' '.join(overrides)}: {text[0] if text else type(error).__name__}")


def _check_override(override: str, config_dir: str) -> str | None:
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    key = key.lstrip("+~")
    if key.startswith("hydra/launcher"):
        if not _launcher_available(value):
            return (f"{key}={value}: the Hydra launcher plugin for {value!r} is not installed; "
                    f"install the optional launchers with {LAUNCHER_EXTRA}")
        return None
    if key.startswith("hydra"):
        return None
    if "." not in key and "/" not in key:  # a group choice such as norm=bnn
        options = group_options(config_dir, key)
        if options:
            if value not in options:
                return (f"{key}={value} is not a choice of the {key!r} group{close_match(value, options)}; "
                        f"expected one of: {', '.join(options)}")
            return None
        fields = [f.name for f in dataclasses.fields(Config)]
        if key not in fields:
            return f"unknown config group or key {key!r}{close_match(key, fields)}; valid: {', '.join(fields)}"
        return None
    return _check_key(key, value)


def _check_key(key: str, value: str) -> str | None:
    node: type = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            return None
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the config"
            valid = sorted(fields)
            suggestion = close_match(part, valid)
            suggestion = suggestion.replace("'", "'" + ".".join(parts[:depth]) + ".", 1) if depth else suggestion
            return f"unknown key {key!r}: {where} has no {part!r}{suggestion}; valid keys: {', '.join(valid)}"
        node = typing.get_type_hints(node)[part]
    return _check_type(key, value, node)


def _check_type(key: str, value: str, annotation) -> str | None:
    options = typing.get_args(annotation) or (annotation,)
    if value.lower() in ("null", "none") and type(None) in options:
        return None
    for kind in options:
        if kind is type(None):
            continue
        try:
            if kind is int:
                int(value)
            elif kind is float:
                float(value)
            elif kind is bool and value.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                raise ValueError
            return None
        except ValueError:
            continue
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    expected = " or ".join(names.get(k, "null") if k is not type(None) else "null" for k in options)
    return f"{key}={value} has the wrong type: expected {expected}"


def _launcher_available(name: str) -> bool:
    import importlib.util

    module = {"joblib": "hydra_plugins.hydra_joblib_launcher",
              "submitit_local": "hydra_plugins.hydra_submitit_launcher",
              "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}.get(name)
    if module is None:
        return True  # basic or a third-party launcher: let Hydra judge
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
