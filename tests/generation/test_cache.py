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


def four_counterfactual_file(tmp_path) -> ViewsFile:
    return ViewsFile(tmp_path, "tiny", "semantic", {"seed": 1, "num_counterfactuals": 4})


FOUR = {
    "u1": {**VIEWS["u1"], "C2": ["1", "8"], "C3": ["1", "6"], "C4": ["3", "2"]},
    "u2": {**VIEWS["u2"], "C2": ["3", "7"], "C3": ["9", "6"], "C4": ["3", "1"]},
}


def test_the_key_hash_of_one_counterfactual_is_unchanged_so_existing_files_stay_valid():
    # Hashes computed before lumos_num_counterfactuals existed, with the same settings.
    ml = GeneratorSettings(dataset="ml-100k")
    assert key_hash(cache_key(ml, "semantic", {}, {"layers": 8})) == "4372b7b11b28"
    assert key_hash(cache_key(ml, "prompt", {"model": "m"}, {"layers": 8})) == "8991ce2ac0bc"
    split = GeneratorSettings(
        dataset="tiny",
        seed=7,
        rho_c=0.5,
        eval_args={"split": {"LS": "valid_and_test"}},
        data_filters=(("USER_ID_FIELD", "'user_id'"),),
        lumos_num_counterfactuals=1,
    )
    assert key_hash(cache_key(split, "semantic", {}, {"layers": 8})) == "1e33eae6ab93"
    assert "num_counterfactuals" not in cache_key(ml, "semantic", {}, {"layers": 8})


def test_the_key_holds_the_number_of_counterfactuals_above_one():
    one = GeneratorSettings(dataset="tiny")
    for mode, generator in (("semantic", {}), ("prompt", {"model": "m"})):
        keys = [
            cache_key(GeneratorSettings(dataset="tiny", lumos_num_counterfactuals=n), mode, generator, {"layers": 8})
            for n in (1, 2, 4)
        ]
        assert len({key_hash(k) for k in keys}) == 3
    four = cache_key(GeneratorSettings(dataset="tiny", lumos_num_counterfactuals=4), "semantic", {}, {"layers": 8})
    assert four["num_counterfactuals"] == 4
    assert {k: v for k, v in four.items() if k != "num_counterfactuals"} == cache_key(
        one, "semantic", {}, {"layers": 8}
    )


def test_rows_of_further_counterfactuals_round_trip(tmp_path):
    file = four_counterfactual_file(tmp_path)
    assert file.view_names == ("F", "R", "C", "C2", "C3", "C4")
    file.append(FOUR)
    assert file.path.read_text().splitlines()[4:7] == ["u1\tC2\t1 8", "u1\tC3\t1 6", "u1\tC4\t3 2"]
    assert file.load(users={"u1", "u2"}, items=set("123456789")) == FOUR


def test_a_file_with_fewer_counterfactuals_than_asked_is_never_used(tmp_path):
    four = four_counterfactual_file(tmp_path)
    one = ViewsFile(tmp_path, "tiny", "semantic", {"seed": 1})
    assert one.path != four.path  # n_c is in the key: another file
    one.append(VIEWS)
    four.path.write_bytes(one.path.read_bytes())  # three-view rows where four counterfactuals are asked for
    assert four.load() == {}  # every user lacks C2..C4: redone, not used
    assert four.path.read_text() == f"{HEADER}\n"
    four.append({"u1": FOUR["u1"]})
    lines = four.path.read_text().splitlines(keepends=True)
    partial = {k: v for k, v in FOUR["u2"].items() if k != "C3"}
    four.path.write_text("".join(lines) + "".join(f"u2\t{k}\t{' '.join(v)}\n" for k, v in partial.items()))
    assert four.load() == {"u1": FOUR["u1"]}  # u2 without C3 is incomplete
    assert four.path.read_text() == "".join(lines)


def test_counterfactual_rows_the_key_does_not_have_are_a_clear_error(tmp_path):
    one = ViewsFile(tmp_path, "tiny", "semantic", {"seed": 1})
    one.path.write_text(f"{HEADER}\nu1\tC2\t1 2\n")
    with pytest.raises(AtomicFileError, match=r"unknown view 'C2' \(views are F, R, C\)") as error:
        one.load()
    assert "Delete it" in str(error.value)
    four = four_counterfactual_file(tmp_path)
    four.path.write_text(f"{HEADER}\nu1\tC5\t1 2\n")
    with pytest.raises(AtomicFileError, match=r"unknown view 'C5' \(views are F, R, C, C2, C3, C4\)"):
        four.load()
    four.path.write_text(f"{HEADER}\nu1\tC2\t1 2\textra\n")
    with pytest.raises(AtomicFileError, match="4 tab-separated cells instead of 3"):
        four.load()
    four.path.write_text(f"{HEADER}\nu1\tC3\t1 2\nu1\tC3\t1 2\n")
    with pytest.raises(AtomicFileError, match="second C3 row"):
        four.load()


def test_a_second_writer_waits_for_the_first_and_then_finds_its_users(tmp_path):
    """Two runs of the same views settings at once: without the lock both would generate and append
    (every user twice, a malformed file); with it the second waits, then reads the first one's rows.

    The test waits on events, not on a clock: the first writer's process signals (a file) once it
    holds the lock, however long its imports take on a busy machine; only its exit ends the wait."""
    import subprocess
    import sys
    import textwrap
    import time

    started = tmp_path / "first-holds-the-lock"
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from recbole_lumos.generation.cache import ViewsFile
        file = ViewsFile({str(tmp_path)!r}, "tiny", "semantic", {{"seed": 1}})
        with file.locked():
            pathlib.Path({str(started)!r}).touch()
            time.sleep(1.0)  # generating, with the lock held
            file.append({{"u1": {VIEWS["u1"]!r}}})
    """)])
    while not started.exists():  # the event: the first writer holds the lock
        assert first.poll() is None, "the first writer exited without taking the lock"
        time.sleep(0.02)
    file = views_file(tmp_path)
    with file.locked():  # free only once the first writer has appended (without the lock: {} here)
        assert file.load(users={"u1", "u2"}, items=set("123456789")) == {"u1": VIEWS["u1"]}
    assert first.wait() == 0
