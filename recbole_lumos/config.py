"""Property files and their precedence, and building RecBole ``Config`` objects.

Precedence, lowest to highest (docs/design.md §1), the same rule RecBole uses:

1. RecBole's internal defaults (``recbole/properties``; for a RecBole model also its
   own ``<Model>.yaml``);
2. for a plugin model, the YAML of its nearest RecBole base class (``CL4SRec``
   extends ``SASRec``, so it starts from RecBole's ``SASRec.yaml``);
3. ``properties/overall.yaml`` (the evaluation protocol);
4. ``properties/dataset/<dataset>.yaml``;
5. ``properties/model/<Model>.yaml`` (for a shorthand such as ``FedSASRec``, the
   base model's file, then the shorthand's);
6. ``properties/dataset/<dataset>/<Model>.yaml``, in the same order as step 5: a
   model's defaults for one data set (LUMOS on a sparse Amazon category keeps other
   settings than on MovieLens). RecBole has no such layer; without it a model file
   always overrides the data set's file, so a default could not follow the data;
7. ``--config_files`` in the order given;
8. ``--key=value`` on the command line (or ``overrides`` in Python).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import recbole
from recbole.config import Config

from recbole_lumos.compat import isolated_argv
from recbole_lumos.config_check import check_config
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.registry import ModelSpec, resolve_model

PROPERTIES_DIR = Path(os.environ.get("RECBOLE_LUMOS_PROPERTIES", Path(__file__).parent / "properties"))
_RECBOLE_MODEL_YAML = Path(recbole.__file__).parent / "properties" / "model"


def parse_value(text: str) -> Any:
    """Convert a command-line string exactly as RecBole's ``Config`` does."""
    return Config._convert_config_dict(None, {"v": text})["v"]


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """Parse ``--key=value`` (or ``--key value``) pairs into typed config values."""
    overrides: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--"):
            raise ConfigurationError(
                f"Cannot read the argument {arg!r}: options are written --key=value "
                "(for example --epochs=10 or --learning_rate=0.001)."
            )
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                value = items[i + 1]
                i += 1
            else:
                value = "True"
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def _recbole_base_yaml(model_class: type) -> list[str]:
    """RecBole's YAML for the nearest RecBole ancestor of a plugin model, if any."""
    if model_class.__module__.startswith("recbole."):
        return []  # RecBole loads its own file internally.
    for base in model_class.__mro__[1:]:
        if base.__module__.startswith("recbole.model."):
            path = _RECBOLE_MODEL_YAML / f"{base.__name__}.yaml"
            if path.is_file():
                return [str(path)]
    return []


def property_files(spec: ModelSpec, dataset: str, config_files: Sequence[str] = ()) -> list[str]:
    """The YAML files to load, lowest precedence first (see the module docstring)."""
    files = _recbole_base_yaml(spec.model_class)
    files.append(str(PROPERTIES_DIR / "overall.yaml"))
    candidates = [PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"]
    candidates += [PROPERTIES_DIR / "model" / f"{name}.yaml" for name in spec.yaml_names]
    candidates += [PROPERTIES_DIR / "dataset" / dataset / f"{name}.yaml" for name in spec.yaml_names]
    files += [str(path) for path in candidates if path.is_file()]
    for path in config_files:
        if not Path(path).is_file():
            raise ConfigurationError(
                f"The config file {path!r} does not exist. Pass existing YAML files to "
                "--config_files, separated by spaces or commas."
            )
        files.append(str(path))
    return files


def build_config(
    model: str | ModelSpec,
    dataset: str,
    config_files: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """A RecBole ``Config`` for ``model`` on ``dataset`` with this project's property files.

    ``model`` is a name (ours, a shorthand, or any RecBole model) or a resolved
    :class:`ModelSpec`. A shorthand's settings (``federated: True`` for
    ``FedSASRec``) live in its property file, so the command line still wins.
    The whole config is checked (:func:`~recbole_lumos.config_check.check_config`):
    a bad value raises :class:`ConfigurationError` before anything is loaded.
    """
    spec = resolve_model(model) if isinstance(model, str) else model
    values = dict(overrides or {})
    with isolated_argv():
        config = Config(
            model=spec.model_class,
            dataset=dataset,
            config_file_list=property_files(spec, dataset, config_files),
            config_dict=values,
        )
    config["model_display_name"] = spec.name
    check_config(config)  # bad values fail here, before any data loads
    return config
