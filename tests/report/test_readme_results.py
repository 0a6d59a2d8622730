"""Every results table in the README is a copy of a file in results/, never typed by hand."""

import re

from conftest import REPO


def _tables_after_markers(text: str) -> dict[str, list[str]]:
    tables = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.search(r"This is `(results/[^`]+\.md)`", line)
        if not match:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|"):
            j += 1
        table = []
        while j < len(lines) and lines[j].startswith("|"):
            table.append(lines[j])
            j += 1
        tables[match.group(1)] = table
    return tables


def test_readme_tables_match_their_results_files():
    tables = _tables_after_markers((REPO / "README.md").read_text())
    assert len(tables) >= 3
    for path, table in tables.items():
        expected = [line for line in (REPO / path).read_text().splitlines() if line.startswith("|")]
        assert table == expected, f"README table for {path} differs from the file; copy it again"
