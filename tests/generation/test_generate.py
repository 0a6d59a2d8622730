"""python -m recbole_lumos.generate: statistics, the views path, clean errors."""

from __future__ import annotations

from recbole_lumos.errors import EXIT_CODE
from recbole_lumos.generate import main


def test_the_command_prints_statistics_and_the_views_path(tiny_data, tiny_lm, tmp_path, capsys):
    cache = tmp_path / "views"
    argv = [
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--lumos_generation=semantic",
        f"--lumos_llm={tiny_lm}",
        f"--lumos_cache_dir={cache}",
        "--lumos_max_users=5",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--show_progress=False",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("views: ") and out[-1].endswith(".views")
    path = out[-1][len("views: ") :]
    assert path.startswith(str(cache)) and any(line.startswith("users ") and line.endswith(" 5") for line in out)
    assert main(argv) == 0  # second call: from the cache
    assert any(line.split() == ["from_cache", "True"] for line in capsys.readouterr().out.splitlines())


def test_input_errors_exit_with_one_paragraph_and_no_traceback(tiny_data, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    argv = ["--dataset=tiny", f"--data_path={tiny_data}", f"--lumos_llm={missing}", "--lumos_generation=semantic"]
    argv += ["--lumos_item_encoder=lm"]  # the language model embeds the items: its path must be usable
    assert main(argv) == EXIT_CODE
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress lines may come first; the error is one paragraph
    assert last.startswith("error: ") and str(missing) in last and "Traceback" not in err
    assert main(["--dataset=tiny", f"--data_path={tiny_data}", "--model=SASRec"]) == EXIT_CODE
    assert "drop --model" in capsys.readouterr().err
