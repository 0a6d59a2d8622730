"""Public datasets from their original sources, converted to RecBole atomic files.

RecBole's own download mirror for its preprocessed atomic files is gone, so each
dataset here is fetched from its publisher (GroupLens, SNAP / UCSD, Microsoft) and
converted locally. The registry :data:`SOURCES` keeps, per dataset name, the raw
files (URL + file name) and the converter; :func:`prepare_dataset` is the one entry
point: it returns ``<data_path>/<name>`` holding ``<name>.inter`` (and ``.item``,
``.user``), converting raw files found in ``<data_path>/<name>/raw/`` or downloading
them first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from recbole_lumos.data.sources.amazon import convert_amazon
from recbole_lumos.data.sources.download import DownloadError, download_file
from recbole_lumos.data.sources.mind import convert_mind
from recbole_lumos.data.sources.movielens import convert_ml_1m, convert_ml_100k
from recbole_lumos.errors import DatasetNotFoundError

__all__ = [
    "SOURCES",
    "DatasetSource",
    "RawFile",
    "get_source",
    "prepare_dataset",
]

logger = logging.getLogger(__name__)

RAW_DIRNAME = "raw"


@dataclass(frozen=True)
class RawFile:
    """One file as its publisher serves it, and the name it gets in the raw folder."""

    url: str
    filename: str


Converter = Callable[[Path, Path, str], list[Path]]


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how its raw files become atomic files."""

    name: str
    raw_files: tuple[RawFile, ...]
    homepage: str
    license_note: str
    suffixes: tuple[str, ...] = ("inter", "item")
    converter: Converter | None = field(default=None, repr=False, compare=False)

    def atomic_filenames(self) -> list[str]:
        """The atomic files :meth:`convert` writes, e.g. ``["ml-1m.inter", "ml-1m.item", ...]``."""
        return [f"{self.name}.{suffix}" for suffix in self.suffixes]

    def convert(self, raw_dir: Path, out_dir: Path) -> list[Path]:
        """Read the raw files in ``raw_dir`` and write ``out_dir/<name>.<suffix>``; return their paths."""
        if self.converter is None:
            raise NotImplementedError(f"no converter for {self.name}")
        return self.converter(Path(raw_dir), Path(out_dir), self.name)


# --------------------------------------------------------------------------- registry

_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_ML_LICENSE = (
    "GroupLens MovieLens usage license: research use, no redistribution without "
    "permission; cite F. M. Harper and J. A. Konstan, ACM TiiS 2015."
)
_SNAP_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
_UCSD_2018 = "https://jmcauley.ucsd.edu/data/amazon_v2"
_AMAZON_2014_LICENSE = (
    "Amazon review data (2014), J. McAuley et al.; for research use; cite "
    "McAuley et al., SIGIR 2015 and He & McAuley, WWW 2016."
)
_AMAZON_2018_LICENSE = (
    "Amazon review data (2018), J. Ni, J. Li, J. McAuley; for research use; cite Ni et al., EMNLP 2019."
)
_MIND_LICENSE = "MIND, Microsoft Research License Terms: non-commercial research use; cite F. Wu et al., ACL 2020."


def _movielens(name: str, converter: Callable[..., list[Path]]) -> DatasetSource:
    archive = f"{name}.zip"
    return DatasetSource(
        name=name,
        raw_files=(RawFile(f"{_GROUPLENS}/{archive}", archive),),
        homepage="https://grouplens.org/datasets/movielens/",
        license_note=_ML_LICENSE,
        suffixes=("inter", "item", "user"),
        converter=partial(converter, archive=archive),
    )


def _amazon_2014(name: str, category: str) -> DatasetSource:
    reviews, meta = f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"
    return DatasetSource(
        name=name,
        raw_files=(
            RawFile(f"{_SNAP_2014}/{reviews}", reviews),
            RawFile(f"{_SNAP_2014}/{meta}", meta),
        ),
        homepage="https://jmcauley.ucsd.edu/data/amazon/",
        license_note=_AMAZON_2014_LICENSE,
        converter=partial(convert_amazon, reviews_file=reviews, meta_file=meta, release="2014"),
    )


def _amazon_2018(name: str, category: str) -> DatasetSource:
    """2018 release (Ni et al.); it has no Baby category, hence no ``amazon2018-baby``."""
    reviews, meta = f"{category}_5.json.gz", f"meta_{category}.json.gz"
    return DatasetSource(
        name=name,
        raw_files=(
            RawFile(f"{_UCSD_2018}/categoryFilesSmall/{reviews}", reviews),
            RawFile(f"{_UCSD_2018}/metaFiles2/{meta}", meta),
        ),
        homepage="https://nijianmo.github.io/amazon/index.html",
        license_note=_AMAZON_2018_LICENSE,
        converter=partial(convert_amazon, reviews_file=reviews, meta_file=meta, release="2018"),
    )


def _mind_small() -> DatasetSource:
    archive = "MINDsmall_train.zip"
    return DatasetSource(
        name="mind-small",
        raw_files=(
            RawFile(
                f"https://mind201910small.blob.core.windows.net/release/{archive}",
                archive,
            ),
        ),
        homepage="https://msnews.github.io/",
        license_note=_MIND_LICENSE,
        converter=partial(convert_mind, archive=archive),
    )


def _registry(*sources: DatasetSource) -> dict[str, DatasetSource]:
    return {source.name: source for source in sources}


#: Every dataset :func:`prepare_dataset` knows, by RecBole dataset name.
SOURCES: dict[str, DatasetSource] = _registry(
    _movielens("ml-100k", convert_ml_100k),
    _movielens("ml-1m", convert_ml_1m),
    _amazon_2014("amazon-beauty", "Beauty"),
    _amazon_2014("amazon-cell-phones", "Cell_Phones_and_Accessories"),
    _amazon_2014("amazon-baby", "Baby"),
    _amazon_2014("amazon-toys", "Toys_and_Games"),
    _amazon_2014("amazon-sports", "Sports_and_Outdoors"),
    _amazon_2018("amazon2018-beauty", "All_Beauty"),
    _amazon_2018("amazon2018-cell-phones", "Cell_Phones_and_Accessories"),
    _amazon_2018("amazon2018-toys", "Toys_and_Games"),
    _mind_small(),
)


def get_source(name: str) -> DatasetSource | None:
    """The registered source for ``name``, or None (the name may still be a user's own dataset)."""
    return SOURCES.get(name)


# ---------------------------------------------------------------------- preparation


def prepare_dataset(name: str, data_path: str | Path, *, download: bool = True, timeout: float = 30.0) -> Path:
    """Make sure ``<data_path>/<name>/<name>.inter`` exists and return ``<data_path>/<name>``.

    Existing atomic files are used as they are. Otherwise raw files already in
    ``<data_path>/<name>/raw/`` are converted (the offline path); missing raw files
    are downloaded first when ``download`` is true. Raises
    :class:`~recbole_lumos.errors.DatasetNotFoundError` (one paragraph saying what
    to place where) when the name is unknown, a raw file is missing and cannot be
    downloaded, or a raw file cannot be read.
    """
    dataset_dir = Path(data_path) / name
    if (dataset_dir / f"{name}.inter").is_file():
        return dataset_dir
    source = get_source(name)
    if source is None:
        raise DatasetNotFoundError(_unknown_message(name, dataset_dir))

    raw_dir = dataset_dir / RAW_DIRNAME
    missing = [raw for raw in source.raw_files if not (raw_dir / raw.filename).is_file()]
    if missing:
        if not download:
            raise DatasetNotFoundError(_missing_message(source, dataset_dir, "downloading is switched off"))
        created = [d for d in (Path(data_path), dataset_dir, raw_dir) if not d.exists()]
        try:
            for raw in missing:
                download_file(raw.url, raw_dir / raw.filename, timeout=timeout)
        except DownloadError as exc:
            _remove_empty_dirs(created)
            raise DatasetNotFoundError(_missing_message(source, dataset_dir, f"the download failed: {exc}")) from exc

    _convert_into(source, raw_dir, dataset_dir)
    return dataset_dir


def _convert_into(source: DatasetSource, raw_dir: Path, dataset_dir: Path) -> list[Path]:
    """Convert in a staging folder, then move the files in (``.inter`` last).

    Why: ``.inter`` is what marks a dataset as ready, so it must appear only once
    every other atomic file is complete.
    """
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=dataset_dir))
    try:
        logger.info("converting %s raw files in %s", source.name, raw_dir)
        try:
            written = source.convert(raw_dir, staging)
        except (
            OSError,
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            SyntaxError,
            zipfile.BadZipFile,
        ) as exc:
            raise DatasetNotFoundError(_corrupt_message(source, dataset_dir, exc)) from exc
        written.sort(key=lambda p: p.suffix == ".inter")
        final = []
        for path in written:
            target = dataset_dir / path.name
            os.replace(path, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_empty_dirs(created: list[Path]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _raw_list(source: DatasetSource) -> str:
    return ", ".join(f"{raw.filename} ({raw.url})" for raw in source.raw_files)


def _missing_message(source: DatasetSource, dataset_dir: Path, reason: str) -> str:
    where = dataset_dir.absolute()
    return (
        f"Dataset '{source.name}' is not available: the atomic files "
        f"{', '.join(source.atomic_filenames())} were expected in {where}/ and the raw "
        f"files to build them are missing ({reason}). To convert offline, place the raw "
        f"file(s) {_raw_list(source)} in {where / RAW_DIRNAME}/ and run again; they are "
        f"converted there. Or pass --data_path=DIR to use a folder whose "
        f"{source.name}/ subfolder already holds {source.name}.inter."
    )


def _corrupt_message(source: DatasetSource, dataset_dir: Path, exc: BaseException) -> str:
    where = dataset_dir.absolute()
    return (
        f"Dataset '{source.name}' could not be built: a raw file in {where / RAW_DIRNAME}/ "
        f"could not be read ({type(exc).__name__}: {exc}), so no atomic files were written "
        f"to {where}/. Delete the damaged file and run again to download it, or place an "
        f"intact copy of {_raw_list(source)} there. Or pass --data_path=DIR to use a folder "
        f"whose {source.name}/ subfolder already holds {source.name}.inter."
    )


def _unknown_message(name: str, dataset_dir: Path) -> str:
    where = dataset_dir.absolute()
    return (
        f"Dataset '{name}' was not found: no atomic file {name}.inter in {where}/, and "
        f"'{name}' is not a dataset that can be downloaded (known sources: "
        f"{', '.join(sorted(SOURCES))}). Place your own RecBole atomic files "
        f"({name}.inter, optionally {name}.item and {name}.user) in {where}/, or pass "
        f"--data_path=DIR to point at the folder that holds {name}/."
    )
