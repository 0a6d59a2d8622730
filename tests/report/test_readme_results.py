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


def _blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks


def test_readme_tables_match_their_results_files():
    tables = _tables_after_markers((REPO / "README.md").read_text())
    assert len(tables) >= 3
    for path, table in tables.items():
        candidates = [block for block in _blocks((REPO / path).read_text()) if block[0] == table[0]]
        assert candidates, f"no table in {path} has the README's header"
        assert table == candidates[0], f"README table for {path} differs from the file; copy it again"
