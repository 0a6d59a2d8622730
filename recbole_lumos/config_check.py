"""One check of a run's whole config, before any data loads.

RecBole accepts any ``--key=value``: a misspelt key is silently ignored, a boolean
written ``Flase`` stays the string ``'Flase'`` (which is truthy), and a bad value
of an enumerated key fails, if at all, deep inside training. This module checks a
built ``Config`` once, up front:

* every enumerated key, boolean and number range this project reads
  (:data:`ENUMS`, :data:`BOOLEANS`, :data:`RANGES`); a bad value raises a
  :class:`~recbole_lumos.errors.ConfigurationError` that lists the valid values
  (the command line then exits with status 2). RecBole's own boolean keys (those
  whose default is a boolean) are checked the same way;
* booleans parse as RecBole users expect: ``True``/``False``, ``true``/``false``
  and ``1``/``0``, normalised to ``True``/``False``; anything else is an error;
* :func:`unknown_keys` finds keys that nothing reads, with a did-you-mean against
  every key RecBole and this project know (:func:`known_keys`: RecBole's property
  files and the keys its sources read, this project's property files and sources,
  and the command-line flags). The command line warns, or fails with ``--strict``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import recbole
import yaml

from recbole_lumos.errors import ConfigurationError

COMMAND_LINE_FLAGS = (
    "model",
    "dataset",
    "config_files",
    "seeds",
    "rerun",
    "results_dir",
    "ablate",
    "strict",
    "verbose",
)
"""Flags the command line reads itself; they are never config keys of a run."""


def _aggregators() -> tuple[str, ...]:
    from recbole_lumos.federated.aggregators import AGGREGATORS

    return tuple(AGGREGATORS)


def _attacks() -> tuple[str, ...]:
    from recbole_lumos.federated.attacks import ATTACKS

    return ATTACKS


def _server_optimizers() -> tuple[str, ...]:
    from recbole_lumos.federated.server_optimizer import SERVER_OPTIMIZERS

    return SERVER_OPTIMIZERS


def _local_losses() -> tuple[str, ...]:
    from recbole_lumos.model.next_item import LOCAL_LOSSES

    return LOCAL_LOSSES


def _generation_modes() -> tuple[str, ...]:
    from recbole_lumos.generation.settings import MODES

    return MODES


def _gen_dtypes() -> tuple[str, ...]:
    from recbole_lumos.generation.settings import GEN_DTYPES

    return GEN_DTYPES


@dataclass(frozen=True)
class Enum:
    """A key that takes one of a few names; ``fold_case`` where the code reading it lower-cases it."""

    values: Callable[[], tuple[str, ...]]
    fold_case: bool = False
    optional: bool = False
    """``~`` (None) is also valid."""


def _names(*values: str) -> Callable[[], tuple[str, ...]]:
    return lambda: values


ENUMS: dict[str, Enum] = {
    "train_mode": Enum(_names("prefix", "all_positions")),
    "user_batch_order": Enum(_names("random", "by_length"), optional=True),
    "local_optimizer": Enum(_names("sgd", "adam"), fold_case=True),
    "local_loss": Enum(_local_losses),
    "aggregator": Enum(_aggregators, fold_case=True, optional=True),
    "server_optimizer": Enum(_server_optimizers, fold_case=True),
    "attack": Enum(_attacks, fold_case=True, optional=True),
    "sim": Enum(_names("dot", "cos")),
    "lumos_generation": Enum(_generation_modes),
    "lumos_item_pool": Enum(_names("all", "train")),
    "lumos_counterfactual_items": Enum(_names("generated", "random"), optional=True),
    "lumos_gen_dtype": Enum(_gen_dtypes),
    "lumos_view_space": Enum(_names("text", "random")),
    "item_text": Enum(_names("none", "init", "fusion"), optional=True),
}
"""Enumerated keys of this project and their valid values."""

BOOLEANS = (
    "federated",
    "sparse_upload",
    "server_lazy_rows",
    "lumos_aug_f_targets",
    "reproducibility",
    "repeatable",
    "show_progress",
    "rerun",
    "strict",
    "verbose",
)
"""Boolean keys of this project (RecBole's are found by their default, see :func:`check_config`)."""


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]`` (``low_open`` / ``high_open`` exclude the end); ``optional``: ``~`` allowed."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.high == math.inf:
            bound = f" {'>' if self.low_open else '>='} {self.low:g}" if self.low != -math.inf else ""
        else:
            bound = f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"{kind}{bound}" + (" or ~ (unset)" if self.optional else "")

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _at_least(low: float, optional: bool = False) -> Range:
    return Range(low=low, integer=True, optional=optional)


_POSITIVE = Range(low=0, low_open=True)
_NON_NEGATIVE = Range(low=0)
_SHARE = Range(low=0, high=1)
_BETA = Range(low=0, high=1, high_open=True)

RANGES: dict[str, Range] = {
    "epochs": _at_least(1),
    "train_batch_size": _at_least(1),
    "eval_batch_size": _at_least(1),
    "learning_rate": _NON_NEGATIVE,
    "stopping_step": _at_least(1),
    "eval_step": _at_least(1),
    "MAX_ITEM_LIST_LENGTH": _at_least(1),
    "hidden_size": _at_least(1),
    "inner_size": _at_least(1),
    "n_layers": _at_least(1),
    "n_heads": _at_least(1),
    "seed": Range(integer=True),
    "user_batch_size": _at_least(1),
    "window_stride": _at_least(1, optional=True),
    "federated_eval_step": _at_least(1, optional=True),
    "federated_stopping_step": _at_least(1, optional=True),
    "client_fraction": Range(low=0, high=1, low_open=True, optional=True),
    "clients_per_round": _at_least(1, optional=True),
    "client_batch": _at_least(1, optional=True),
    "client_dropout": Range(low=0, high=1, high_open=True),  # a share of the sampled clients; 1 would leave none
    "local_epochs": _at_least(1),
    "local_lr": _NON_NEGATIVE,
    "num_negatives": _at_least(1),
    "server_lr": _NON_NEGATIVE,  # 0: a frozen model, used to test early stopping
    "server_momentum": _BETA,
    "server_beta1": _BETA,
    "server_beta2": _BETA,
    "server_eps": _POSITIVE,
    "mu": _NON_NEGATIVE,
    "trim_ratio": Range(low=0, high=0.5, high_open=True),
    "num_malicious": _at_least(0),
    "multi_krum_m": _at_least(1, optional=True),
    "max_update_norm": Range(low=0, low_open=True, optional=True),
    "ldp_clip": Range(low=0, low_open=True, optional=True),
    "ldp_noise_multiplier": _NON_NEGATIVE,
    "ldp_delta": Range(low=0, high=1, low_open=True, high_open=True),
    "noise_ratio": _SHARE,
    "attack_ratio": Range(low=0, high=1, low_open=True),
    "attack_scale": _POSITIVE,
    "attack_std": _POSITIVE,
    "attack_length": _at_least(2, optional=True),
    "lambda_cl": _NON_NEGATIVE,
    "tau": _POSITIVE,
    "w_c": _NON_NEGATIVE,
    "k_f": _at_least(0),
    "rho_r": _SHARE,
    "rho_c": _SHARE,
    "crop_ratio": _SHARE,
    "mask_ratio": _SHARE,
    "reorder_ratio": _SHARE,
    "lumos_num_counterfactuals": _at_least(1),
    "lumos_item_negatives": _at_least(0),
    "lumos_aug_weight": _NON_NEGATIVE,
    "lumos_far_fraction": Range(low=0, high=1, low_open=True),
    "lumos_intent_window": _at_least(1),
    "lumos_max_users": _at_least(1, optional=True),
}
"""Number ranges of the keys this project reads (RecBole's training keys included)."""

_TRUE = ("true",)
_FALSE = ("false",)


def parse_boolean(key: str, value: Any) -> bool:
    """``value`` as a boolean, the way RecBole users write one, or a :class:`ConfigurationError`.

    ``True``/``False`` (RecBole's ``eval`` of the command line, or YAML), the strings
    ``true``/``false`` in any case, and ``1``/``0``; nothing else (``'Flase'`` is not True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE, "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ConfigurationError(
        f"{key} is {value!r}, but it must be a boolean: True or False (true/false and 1/0 also work), "
        f"for example --{key}=False."
    )


def name_list(value: Any) -> list[str]:
    """A list-of-names key as a list: ``--lumos_views=[F,R]`` reaches the config as the string "[F,R]" (RecBole
    cannot ``eval`` it), so "[F,R]", "['F', 'R']", "F,R" and "F" are read as lists too."""
    if isinstance(value, str):
        return [v.strip(" '\"") for v in value.strip("[] ").split(",") if v.strip(" '\"")]
    return list(value or [])


def _check_enum(key: str, value: Any, rule: Enum) -> None:
    if value is None and rule.optional:
        return
    valid = rule.values()
    text = str(value).strip()
    candidates = [v.lower() for v in valid] if rule.fold_case else list(valid)
    if (text.lower() if rule.fold_case else text) in candidates and isinstance(value, str):
        return
    close = difflib.get_close_matches(text, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigurationError(
        f"{key} is {value!r}, but it must be one of: {', '.join(valid)}.{hint} "
        f"Set it in your config file or with --{key}=NAME, for example --{key}={valid[0]}."
    )


def _check_range(key: str, value: Any, rule: Range) -> None:
    if value is None and rule.optional:
        return
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    fits = (
        number is not None
        and math.isfinite(number)
        and (not rule.integer or float(number).is_integer())
        and rule.holds(float(number))
    )
    if not fits:
        raise ConfigurationError(
            f"{key} is {value!r}, but it must be {rule.describe()}; fix --{key} or your config file."
        )


def check_config(config: Any) -> None:
    """Check every enumerated key, boolean and number range of a built ``Config`` (or dict).

    Booleans are normalised in place (``'true'`` -> ``True``). Raises a
    :class:`ConfigurationError` naming the key, its value and the valid values.
    """
    values = config.final_config_dict if hasattr(config, "final_config_dict") else config
    booleans = set(BOOLEANS) | recbole_boolean_keys()
    for key in sorted(booleans):
        if key in values and values[key] is not None:
            values[key] = parse_boolean(key, values[key])
    for key, rule in ENUMS.items():
        if key in values:
            _check_enum(key, values[key], rule)
    for key, rule in RANGES.items():
        if key in values:
            _check_range(key, values[key], rule)
    budgets = values.get("round_budgets")
    if budgets is not None:
        items = budgets if isinstance(budgets, list | tuple) else [budgets]
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in items):
            raise ConfigurationError(
                f"round_budgets is {budgets!r}, but it must be a list of whole numbers of rounds >= 1, "
                "for example --round_budgets=[50,100,200], or ~ for none."
            )
    views = values.get("lumos_views")
    if views is not None:
        items = name_list(views)
        bad = [v for v in items if v not in ("F", "R", "C")]
        if bad or not {"F", "R"} & set(items):
            raise ConfigurationError(
                f"lumos_views is {views!r}, but it must be a list of views out of F, R and C holding F or R, "
                "for example --lumos_views=[F,R,C]."
            )


# ------------------------------------------------------------------ known keys

_RECBOLE_DIR = Path(recbole.__file__).parent
_PACKAGE_DIR = Path(__file__).parent
_READ_KEY = re.compile(
    r"""(?:config|settings|values|overrides|parameters|final_config_dict)(?:\.get\(|\[)\s*["']([A-Za-z_][A-Za-z0-9_]*)["']"""
)
"""``config["key"]``, ``config.get("key"`` and the same on the other names this code gives a config."""
_GET_KEY = re.compile(r"""\b_?get\(\s*(?:config|settings|values)\s*,\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def _yaml_keys(folder: Path) -> set[str]:
    keys: set[str] = set()
    for path in folder.rglob("*.yaml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            keys |= {str(k) for k in data}
    return keys


def _source_keys(folder: Path) -> set[str]:
    keys: set[str] = set()
    for path in folder.rglob("*.py"):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        keys |= set(_READ_KEY.findall(text)) | set(_GET_KEY.findall(text))
    return keys


@lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every key RecBole or this project reads.

    RecBole's property files (``recbole/properties``, its model, dataset and quick-start
    YAMLs) and the keys its sources read (``config["..."]``, the argument lists in
    ``recbole.utils.argument_list``); this project's property files and sources; the
    command-line flags. A key outside this set is read by nothing.
    """
    from recbole.utils import argument_list

    keys = _yaml_keys(_RECBOLE_DIR / "properties") | _source_keys(_RECBOLE_DIR)
    for name in dir(argument_list):
        if name.endswith("_arguments"):
            keys |= set(getattr(argument_list, name))
    keys |= _yaml_keys(_PACKAGE_DIR / "properties") | _source_keys(_PACKAGE_DIR)
    keys |= set(ENUMS) | set(BOOLEANS) | set(RANGES) | set(COMMAND_LINE_FLAGS)
    keys |= {"MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "local_rank", "single_spec", "model_display_name"}
    return frozenset(keys)


@lru_cache(maxsize=1)
def recbole_boolean_keys() -> frozenset[str]:
    """Keys whose default in RecBole's ``overall.yaml`` is a boolean (``use_gpu``, ``save_dataset``, ...)."""
    data = yaml.safe_load((_RECBOLE_DIR / "properties" / "overall.yaml").read_text(encoding="utf-8")) or {}
    return frozenset(k for k, v in data.items() if isinstance(v, bool))


def unknown_keys(keys: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(key, closest known key or None)`` for every key that nothing reads."""
    known = known_keys()
    lowered = {k.lower(): k for k in known}
    found = []
    for key in keys:
        if key in known:
            continue
        suggestion = lowered.get(key.lower())
        if suggestion is None:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            suggestion = close[0] if close else None
        found.append((key, suggestion))
    return found


def describe_unknown(unknown: list[tuple[str, str | None]], source: str = "the command line") -> str:
    """One paragraph naming the unknown keys and the likely intended ones."""
    parts = [f"{key!r} (did you mean {hint!r}?)" if hint else repr(key) for key, hint in unknown]
    noun = "key" if len(unknown) == 1 else "keys"
    return (
        f"Unknown config {noun} on {source}: {', '.join(parts)}. Neither RecBole nor recbole-lumos reads "
        f"{'it' if len(unknown) == 1 else 'them'}, so {'it has' if len(unknown) == 1 else 'they have'} no effect; "
        "fix the spelling, or pass --strict to make this an error."
    )


def config_file_keys(paths: Iterable[str]) -> dict[str, list[str]]:
    """The top-level keys of each YAML file given with ``--config_files``."""
    found: dict[str, list[str]] = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue  # build_config reports a missing file; RecBole a malformed one
        if isinstance(data, Mapping):
            found[str(path)] = [str(k) for k in data]
    return found
