"""Grounding: turning a language model's free-text answer into catalogue item ids.

Generated text is never used raw (docs/design.md §2.1). Each answer is read in stages and
every item records the stage that found it, so the statistics show how much of the
views the model really chose:

1. ``index``: a candidate number ("3", "3. Toy Story", "7, 12");
2. ``title``: an exact title after normalisation (case, punctuation, year,
   leading or trailing article: "Empire Strikes Back, The (1980)" = "the empire strikes back");
3. ``fuzzy``: the closest title by ``difflib`` (ratio >= 0.75);
4. ``embedding``: the candidate nearest to the answer text in the item-embedding space;
5. ``fallback``: what is still missing comes from the semantic construction.

Candidates come first at every stage. F and R also accept a title of any other pool
item the user has not seen (the model may know a better continuation than the list);
C stays inside its candidates, which are all far from the user's profile.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

STAGES = ("index", "title", "fuzzy", "embedding", "fallback")

_ARTICLES = ("the", "a", "an", "les", "la", "le", "il", "das", "der", "die")
_FILLER = re.compile(r"\b(?:and|or|candidates?|numbers?|answer|items?|movies?|products?|no|is|are)\b", re.I)
_LEADING_INDEX = re.compile(r"^\s*(?:candidates?|numbers?|no\.?|#)?\s*(\d{1,3})\s*(?:[.):\]\-]|$)", re.I)


def normalise_title(text: str) -> str:
    """Lower case, no accents, no bracketed parts, no punctuation, no leading or trailing article."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"\([^)]*\)|\[[^\]]*\]|[(\[][^)\]]*$", " ", text)  # also an unclosed one (cut answers)
    text = re.sub(r"[^a-z0-9]+", " ", text).split()
    if len(text) > 1 and text[-1] in _ARTICLES:  # "empire strikes back the" (MovieLens writes ", The")
        text = text[:-1]
    if len(text) > 1 and text[0] in _ARTICLES:
        text = text[1:]
    return " ".join(text)


class TitleIndex:
    """Normalised titles of the catalogue, indexed by internal item id (``titles[i]`` is id ``i + 1``)."""

    def __init__(self, titles: Sequence[str]) -> None:
        self.normalised = [""] + [normalise_title(t) for t in titles]
        self.by_title: dict[str, list[int]] = {}
        for item, title in enumerate(self.normalised):
            if item and title:
                self.by_title.setdefault(title, []).append(item)

    def exact(self, text: str, allowed: Collection[int] | None) -> int | None:
        for item in self.by_title.get(normalise_title(text), []):
            if allowed is None or item in allowed:
                return item
        return None

    def fuzzy(self, text: str, items: Sequence[int], cutoff: float = 0.75) -> int | None:
        query = normalise_title(text)
        if not query or not items:
            return None
        names = [self.normalised[i] for i in items]
        match = difflib.get_close_matches(query, names, n=1, cutoff=cutoff)
        return items[names.index(match[0])] if match else None


@dataclass
class Grounding:
    """One answer's items with the stage that found each, and text left for the embedding stage."""

    need: int
    items: list[int] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.items) >= self.need

    def add(self, item: int, stage: str) -> None:
        if item not in self.items and not self.complete:
            self.items.append(int(item))
            self.stages.append(stage)


def _pieces(line: str) -> list[str]:
    return [p.strip(" \t-*•\"'`.") for p in re.split(r"[,;|]|\s+and\s+", line) if p.strip(" \t-*•\"'`.")]


def _bare_indices(piece: str, count: int) -> list[int] | None:
    """Numbers in a piece that has no words of its own ("3", "3 7", "number 12"), else ``None``."""
    if re.search(r"[A-Za-z]{2,}", _FILLER.sub(" ", piece)):
        return None
    numbers = [int(n) for n in re.findall(r"\d+", piece)]
    valid = [n for n in numbers if 1 <= n <= count]
    return valid or None


def ground_text(
    answer: str,
    candidates: Sequence[int],
    need: int,
    index: TitleIndex,
    *,
    blocked: Collection[int],
    catalogue: Collection[int] | None,
) -> Grounding:
    """Stages 1-3 on one answer. ``catalogue``: other items a title may name (``None``: candidates only)."""
    result = Grounding(need=need)
    if need <= 0:
        return result
    candidate_set = set(candidates)

    def usable(item: int | None) -> bool:
        return item is not None and item not in blocked and item not in result.items

    def named(text: str) -> tuple[int, str] | None:
        """The item a title names: exact before fuzzy, candidates before the rest of the catalogue."""
        item = index.exact(text, candidate_set)
        if not usable(item) and catalogue is not None:
            item = index.exact(text, catalogue)
        if usable(item):
            return item, "title"
        item = index.fuzzy(text, [c for c in candidates if usable(c)])
        if not usable(item) and catalogue is not None and len(re.sub(r"\W", "", text)) >= 4:
            item = index.fuzzy(text, [c for c in catalogue if c not in blocked])
        return (item, "fuzzy") if usable(item) else None

    def numbered(text: str) -> bool:
        """ "N" or "N. title": candidate N, unless the title names another item (N was list numbering)."""
        leading = _LEADING_INDEX.match(text)
        if not leading or not 1 <= int(leading[1]) <= len(candidates):
            return False
        by_number = candidates[int(leading[1]) - 1]
        rest = text[leading.end() :].strip()
        found = named(rest) if re.search(r"[A-Za-z]{2,}", rest) else None
        if found is not None and found[0] != by_number:
            result.add(*found)
        elif usable(by_number):
            result.add(by_number, "index")
        return True

    for line in answer.splitlines():
        line = line.strip()
        if result.complete:
            break
        if not line or _bare_indices(line, len(candidates)) is None and numbered(line):
            continue
        whole = index.exact(line, candidate_set)
        if usable(whole):
            result.add(whole, "title")
            continue
        for piece in _pieces(line):
            if result.complete:
                break
            numbers = _bare_indices(piece, len(candidates))
            if numbers:
                for n in numbers:
                    if usable(candidates[n - 1]):
                        result.add(candidates[n - 1], "index")
                continue
            if numbered(piece):
                continue
            found = named(piece)
            if found is not None:
                result.add(*found)
            elif _title_like(piece):
                result.pending.append(piece)
    return result


def _title_like(piece: str) -> bool:
    """Text worth an embedding look-up: some letters, not a preamble ("... the following movies:")."""
    return len(re.findall(r"[A-Za-z]", piece)) >= 3 and not piece.endswith(":") and len(piece.split()) <= 12


def ground_embeddings(
    groundings: Sequence[Grounding],
    candidate_lists: Sequence[Sequence[int]],
    piece_vectors: np.ndarray,
    item_vectors: np.ndarray,
) -> None:
    """Stage 4, in place: each pending piece takes its nearest unused candidate.

    ``piece_vectors`` holds the unit embeddings of every grounding's pending pieces,
    in order; ``item_vectors`` is indexed by internal item id (row 0 padding).
    """
    row = 0
    for grounding, candidates in zip(groundings, candidate_lists, strict=True):
        for _piece in grounding.pending:
            vector = piece_vectors[row]
            row += 1
            if grounding.complete:
                continue
            free = [c for c in candidates if c not in grounding.items]
            if free:
                sims = item_vectors[free] @ vector
                grounding.add(free[int(np.argmax(sims))], "embedding")
