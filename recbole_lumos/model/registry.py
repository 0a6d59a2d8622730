"""Model names: ours, shorthands, and every RecBole model.

RecBole's ``get_model`` only searches RecBole's own packages, so plugin models are
resolved here and always handed to RecBole as classes (``Config(model=Class)``).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from recbole.utils import get_model

from recbole_lumos.errors import ConfigurationError, UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """What a model name on the command line stands for."""

    name: str
    """The name the user typed; used for results, tables and checkpoints."""
    model_class: type
    """The RecBole model class that is built."""
    yaml_names: tuple[str, ...]
    """``properties/model/<name>.yaml`` files to load, lowest precedence first."""


def _project_models() -> dict[str, type]:
    from recbole_lumos.model.cl4srec import CL4SRec
    from recbole_lumos.model.lumos import LUMOS

    return {"CL4SRec": CL4SRec, "LUMOS": LUMOS}


SHORTHANDS: dict[str, str] = {
    "FedSASRec": "SASRec",
    "FedSASRec-T": "FedSASRec",
    "FedCL4SRec": "CL4SRec",
    "LUMOS-noF": "LUMOS",
    "LUMOS-noR": "LUMOS",
    "LUMOS-noC": "LUMOS",
    "LUMOS-randC": "LUMOS",
    "LUMOS-randViews": "LUMOS",
    "LUMOS-central": "LUMOS",
}
"""Shorthand name -> base model name; the shorthand's YAML holds what differs (the LUMOS
ablations of docs/design.md §3 are shorthands too)."""

ABLATIONS: dict[str, list[str]] = {
    "views": ["LUMOS", "LUMOS-noF", "LUMOS-noR", "LUMOS-randC", "LUMOS-randViews", "LUMOS-central"]
}
"""``--ablate=NAME`` expands ``LUMOS`` into these runs. ``LUMOS-noC`` is not among them: federated
(LUMOS's default) it is FedSASRec by construction unless ``lumos_aug_weight > 0``, so its row
would repeat the baseline; ``LUMOS-randC`` (random counterfactual items) isolates the generator's
counterfactuals instead, and ``LUMOS-randViews`` (every view from random item embeddings) what the
item texts add through the views."""


def _recbole_model_names() -> list[str]:
    """Module names of RecBole's models, read from disk (importing them needs optional extras)."""
    import recbole.model as recbole_models

    root = Path(recbole_models.__file__).parent
    return [
        module.name
        for package in root.glob("*_recommender")
        for module in pkgutil.iter_modules([str(package)])
        if not module.name.startswith("_")
    ]


def _class_name(module_or_class_name: str) -> str:
    """RecBole model modules are lower-case (``sasrec``); return the class name (``SASRec``)."""
    if not module_or_class_name.islower():
        return module_or_class_name
    import recbole.model as recbole_models

    for package in pkgutil.iter_modules(recbole_models.__path__):
        if not (package.ispkg and package.name.endswith("_recommender")):
            continue
        try:
            module = importlib.import_module(f"recbole.model.{package.name}.{module_or_class_name}")
        except ImportError:
            continue
        for attr in dir(module):
            if attr.lower() == module_or_class_name and isinstance(getattr(module, attr), type):
                return attr
    return module_or_class_name


def available_models() -> list[str]:
    """Names this project can run (RecBole's given as module names, case-insensitive)."""
    return sorted(_project_models()) + sorted(SHORTHANDS) + sorted(_recbole_model_names())


def resolve_model(name: str) -> ModelSpec:
    """Resolve a model name, or raise :class:`UnknownModelError` naming close matches."""
    if name in SHORTHANDS:
        base = resolve_model(SHORTHANDS[name])
        return ModelSpec(name, base.model_class, base.yaml_names + (name,))
    ours = _project_models()
    if name in ours:
        return ModelSpec(name, ours[name], (name,))
    if name.lower() in _recbole_model_names():  # only then ask RecBole: its search imports every model package
        try:
            return ModelSpec(name, get_model(name), (name,))
        except (ValueError, AttributeError):  # a module of that name, but the class is spelt otherwise
            pass
        except ImportError as error:
            raise ConfigurationError(
                f"RecBole's model {name!r} needs the package {error.name!r}, which is not installed. Install it "
                f"(pip install {error.name}) or choose another model."
            ) from error
    known = list(ours) + list(SHORTHANDS) + _recbole_model_names()
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(_class_name(lowered[c])) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} Model names are case-sensitive. This project "
        f"adds {', '.join(sorted(list(ours) + list(SHORTHANDS)))}; any RecBole model also works "
        "by its class name (SASRec, GRU4Rec, BERT4Rec, ...). Pass it as --model=NAME, "
        "or several as --model=SASRec,CL4SRec."
    )
