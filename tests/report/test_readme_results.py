"""Every results table in the README is a copy of a file in results/, never typed by hand."""

import pytest
from conftest import REPO

from recbole_lumos.report.readme_tables import refresh, table_blocks, tables_after_markers


def test_readme_tables_match_their_results_files():
    tables = tables_after_markers((REPO / "README.md").read_text())
    assert len(tables) >= 6  # the headline tables; the rest live in results/
    for path, blocks in tables.items():
        assert blocks, f"no table follows the README's reference to {path}"
        in_file = table_blocks((REPO / path).read_text())
        for block in blocks:
            assert block in in_file, (
                f"a README table for {path} differs from the file; run python -m recbole_lumos.report.readme_tables"
            )


def test_the_readme_is_already_refreshed():
    text = (REPO / "README.md").read_text()
    assert refresh(text, REPO) == (text, [])


STUDY = """| cell | seeds | NDCG@20 |
|---|---|---|
| FedSASRec | 2020,2021 | 0.0462 |
| LUMOS | 2020,2021 | 0.0467 |

| cell | rounds to 90% |
|---|---|
| FedSASRec | 187 |
"""

README = """# Manual

**The study** (a wrapped
marker). This is
`results/study.md`:

| cell | seeds | NDCG@20 |
|---|---|---|
| FedSASRec | 2020 | 0.0466 |

| cell | rounds to 90% |
|---|---|
| FedSASRec | 187 |

A paragraph after, with a table that is not a copy:

| a | b |
|---|---|
"""


def test_refresh_copies_each_table_again_by_its_header(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.md").write_text(STUDY)
    text, changed = refresh(README, tmp_path)
    assert changed == ["results/study.md: | cell | seeds | NDCG@20 |..."]
    assert "| LUMOS | 2020,2021 | 0.0467 |\n\n| cell | rounds to 90% |" in text
    assert "| FedSASRec | 2020 | 0.0466 |" not in text
    assert text.endswith("A paragraph after, with a table that is not a copy:\n\n| a | b |\n|---|---|\n")
    assert refresh(text, tmp_path) == (text, [])
    assert tables_after_markers(text)["results/study.md"] == table_blocks(STUDY)


def test_refresh_refuses_what_it_cannot_copy(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        refresh(README, tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.md").write_text(STUDY.replace("| NDCG@20 |", "| HR@20 |"))
    with pytest.raises(ValueError, match="no table with the README's header"):
        refresh(README, tmp_path)
