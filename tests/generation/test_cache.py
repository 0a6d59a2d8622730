"""The views file: atomic-style rows, resuming after an interruption, clear errors on a broken file."""

from __future__ import annotations

import pytest

from recbole_lumos.errors import AtomicFileError
from recbole_lumos.generation.cache import HEADER, ViewsFile, cache_key, key_hash
from recbole_lumos.generation.settings import GeneratorSettings

VIEWS = {
    "u1": {"F": ["1", "2", "9"], "R": ["1", "5"], "C": ["7", "2"]},
    "u2": {"F": ["3", "8"], "R": ["4", "3"], "C": ["3", "6"]},
}


def views_file(tmp_path) -> ViewsFile:
    return ViewsFile(tmp_path, "tiny", "semantic", {"seed": 1})


def test_rows_round_trip(tmp_path):
    file = views_file(tmp_path)
    file.append({"u1": VIEWS["u1"]})
    file.append({"u2": VIEWS["u2"]})
    assert file.path.read_text().splitlines()[:2] == [HEADER, "u1\tF\t1 2 9"]
    assert file.load(users={"u1", "u2"}, items=set("123456789")) == VIEWS


def test_a_half_written_line_and_an_incomplete_user_are_dropped(tmp_path):
    file = views_file(tmp_path)
    file.append(VIEWS)
    lines = file.path.read_text().splitlines(keepends=True)
    file.path.write_text("".join(lines[:5]) + lines[5][:4])  # u1 complete, u2 one row and half a line
    assert file.load() == {"u1": VIEWS["u1"]}
    assert file.path.read_text() == "".join(lines[:4])


def test_a_malformed_file_is_an_error_that_says_to_delete_it(tmp_path):
    file = views_file(tmp_path)
    file.path.write_text("user\tview\titems\n")
    with pytest.raises(AtomicFileError, match="Delete it") as error:
        file.load()
    assert str(file.path) in str(error.value)
    file.path.write_text(f"{HEADER}\nu1\tX\t1 2\n")
    with pytest.raises(AtomicFileError, match="unknown view 'X'"):
        file.load()
    file.path.write_text(f"{HEADER}\nu1\tF\t1 2\nu1\tF\t1 2\n")
    with pytest.raises(AtomicFileError, match="second F row"):
        file.load()
    assert file.path.read_text() == f"{HEADER}\nu1\tF\t1 2\nu1\tF\t1 2\n"  # never rewritten


def test_rows_of_other_data_are_an_error(tmp_path):
    file = views_file(tmp_path)
    file.append(VIEWS)
    with pytest.raises(AtomicFileError, match="item '9' is not in this dataset"):
        file.load(users={"u1", "u2"}, items=set("12345678"))


def test_the_key_follows_every_setting_that_changes_views():
    base = GeneratorSettings(dataset="tiny")
    key = key_hash(cache_key(base, "semantic", {}, {"layers": 8}))
    for change in ({"seed": 1}, {"k_f": 2}, {"rho_r": 0.5}, {"rho_c": 0.1}, {"MAX_ITEM_LIST_LENGTH": 20}):
        other = GeneratorSettings(**{**base.__dict__, **change})
        assert key_hash(cache_key(other, "semantic", {}, {"layers": 8})) != key
    assert key_hash(cache_key(base, "semantic", {}, {"layers": 4})) != key
    assert (
        key_hash(cache_key(GeneratorSettings(dataset="tiny", lumos_max_users=3), "semantic", {}, {"layers": 8})) == key
    )
    prompt = cache_key(base, "prompt", {"model": "m"}, {"layers": 8})
    newer = cache_key(
        GeneratorSettings(dataset="tiny", lumos_prompt_version=2), "prompt", {"model": "m"}, {"layers": 8}
    )
    assert key_hash(prompt) != key_hash(newer)
