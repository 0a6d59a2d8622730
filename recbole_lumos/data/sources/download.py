"""Download one raw file safely.

The body is streamed into ``<dest>.part`` and renamed to ``dest`` only once it is
complete, so an interrupted or failed download never leaves a file that a later run
would mistake for a good raw archive.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "recbole-lumos (+https://github.com/RUCAIBox/RecBole)"


class DownloadError(OSError):
    """A raw file could not be fetched (no network, timeout, HTTP error, short body)."""


def part_path(dest: Path) -> Path:
    """Where the body of ``dest`` is streamed before the final rename."""
    return dest.with_name(dest.name + ".part")


def download_file(url: str, dest: str | Path, *, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest`` (streamed, via a ``.part`` file) and return ``dest``.

    Raises :class:`DownloadError` on any network or HTTP failure; the ``.part`` file
    is removed then, and ``dest`` is never created.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    logger.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = _content_length(response)
            with open(part, "wb") as fh:
                shutil.copyfileobj(response, fh, _CHUNK)
                written = fh.tell()
        if expected is not None and written != expected:
            raise DownloadError(f"{url}: got {written} of {expected} bytes")
        os.replace(part, dest)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except (
        urllib.error.URLError,
        http.client.HTTPException,
        TimeoutError,
        ConnectionError,
        ValueError,
        OSError,
    ) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {_describe(exc)}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _content_length(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
