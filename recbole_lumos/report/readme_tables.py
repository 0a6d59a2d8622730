"""The README's results tables are copies of files in ``results/``, never typed by hand.

A table in the README follows a sentence "This is `results/X.md`:" (the marker may wrap); every
table block after it, up to the next paragraph, must appear in that file verbatim. When a study is
republished the files change; ``refresh`` copies each README block again from the file block with the
same header and separator rows, so a README table can show any of a file's tables (or a subset of the
files' tables) and stays a copy. ``python -m recbole_lumos.report.readme_tables [README.md]`` rewrites
the README in place and names each table it changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARKER = re.compile(r"This\s+is\s+`(results/[^`]+\.md)`")


def table_blocks(text: str) -> list[list[str]]:
    """The markdown tables of ``text``: runs of consecutive lines that start with ``|``."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks


def _blocks_after(lines: list[str], start: int) -> list[tuple[int, int]]:
    """(first, end) line spans of the tables right after line ``start``: the rest of the paragraph is
    skipped, then tables separated by blank lines only are taken."""
    j = start
    while j < len(lines) and not lines[j].startswith("|"):
        j += 1
    spans: list[tuple[int, int]] = []
    while j < len(lines) and (lines[j].startswith("|") or not lines[j].strip()):
        if lines[j].startswith("|"):
            first = j
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            spans.append((first, j))
        else:
            j += 1
    return spans


def _marker_spans(text: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """Each marker's results path and the line spans of its tables."""
    lines = text.splitlines()
    found = []
    for match in MARKER.finditer(text):
        line_of_marker = text.count("\n", 0, match.end())
        found.append((match.group(1), _blocks_after(lines, line_of_marker + 1)))
    return found


def tables_after_markers(text: str) -> dict[str, list[list[str]]]:
    """For each "This is `results/X.md`", the table blocks right after it."""
    lines = text.splitlines()
    return {path: [lines[a:b] for a, b in spans] for path, spans in _marker_spans(text)}


def refresh(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every table after a marker copied again from its file (matched by header and
    separator rows), and the list of tables that changed. Raises ValueError when a file is missing or
    has no single table with a changed README table's header: the README then needs a person."""
    lines = text.splitlines()
    changed: list[str] = []
    replacements: list[tuple[int, int, list[str]]] = []
    for path, spans in _marker_spans(text):
        source = root / path
        if not source.exists():
            raise ValueError(f"the README quotes {path}, which does not exist; publish it or drop the table")
        in_file = table_blocks(source.read_text())
        for first, end in spans:
            block = lines[first:end]
            if block in in_file:
                continue
            same_header = [b for b in in_file if b[:2] == block[:2]]
            if len(same_header) != 1:
                how_many = "no table" if not same_header else f"{len(same_header)} tables"
                raise ValueError(f"{path} has {how_many} with the README's header {block[0]!r}; copy it by hand")
            changed.append(f"{path}: {block[0][:60]}...")
            replacements.append((first, end, same_header[0]))
    for first, end, new in sorted(replacements, reverse=True):
        lines[first:end] = new
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), changed


def main(argv: list[str] | None = None) -> None:
    readme = Path((argv if argv is not None else sys.argv[1:] or ["README.md"])[0])
    text, changed = refresh(readme.read_text(), readme.resolve().parent)
    readme.write_text(text)
    print("\n".join(f"refreshed {name}" for name in changed) or "every README table is already a copy")


if __name__ == "__main__":
    main()
