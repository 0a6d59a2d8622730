"""User-facing errors.

Every error a user can cause by bad input (an unknown model, a missing dataset, a
malformed atomic file, an unusable language model, ...) is a :class:`LumosError`.
Its message is one paragraph that names the problem and the fix. The command line
prints it without a traceback and exits with :data:`EXIT_CODE`; nothing already
written on disk (checkpoints, results, view caches) is touched by the failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_CODE = 2


class LumosError(Exception):
    """Base class of errors caused by the user's input, reported without traceback."""


class UnknownModelError(LumosError):
    """The model name is neither one of ours nor one of RecBole's."""


class DatasetNotFoundError(LumosError):
    """No atomic files for the dataset, and they could not be downloaded."""


class AtomicFileError(LumosError):
    """An atomic file is malformed (bad header) or lacks a required column."""


class ConfigurationError(LumosError):
    """A config key has a value that cannot work."""


class CheckpointError(LumosError):
    """A checkpoint cannot be read or does not match this code."""


class LanguageModelError(LumosError):
    """The generator's language model (or its adapter) cannot be found or loaded."""


class GenerationError(LumosError):
    """The language model's output cannot be turned into views (after retries and fallbacks)."""


def exit_status(command: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> int:
    """Run a command-line ``command``; a :class:`LumosError` prints as one paragraph, no traceback."""
    try:
        command(argv)
    except LumosError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CODE
    return 0
