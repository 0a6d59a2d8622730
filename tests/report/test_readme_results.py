"""Every results table in the README is a copy of a file in results/, never typed by hand."""

import re

from conftest import REPO

MARKER = re.compile(r"This\s+is\s+`(results/[^`]+\.md)`")


def tables_after_markers(text: str) -> dict[str, list[list[str]]]:
    """For each 'This is `results/X.md`' (it may wrap), the table blocks right after it:
    consecutive tables separated by blank lines only."""
    tables = {}
    for match in MARKER.finditer(text):
        lines = text[match.end() :].splitlines()[1:]
        j = 0
        while j < len(lines) and not lines[j].startswith("|"):  # the rest of the paragraph
            j += 1
        blocks: list[list[str]] = []
        while j < len(lines) and (lines[j].startswith("|") or not lines[j].strip()):
            if lines[j].startswith("|"):
                if not blocks or not lines[j - 1].startswith("|"):
                    blocks.append([])
                blocks[-1].append(lines[j])
            j += 1
        tables[match.group(1)] = blocks
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
    tables = tables_after_markers((REPO / "README.md").read_text())
    assert len(tables) >= 8
    for path, blocks in tables.items():
        assert blocks, f"no table follows the README's reference to {path}"
        in_file = _blocks((REPO / path).read_text())
        for block in blocks:
            assert block in in_file, f"a README table for {path} differs from the file; copy it again"
