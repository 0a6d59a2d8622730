"""Grounding answers to catalogue ids: index, title, fuzzy title, embedding, in that order."""

from __future__ import annotations

import numpy as np

from recbole_lumos.generation.grounding import Grounding, TitleIndex, ground_embeddings, ground_text, normalise_title

TITLES = ["Toy Story (1995)", "Empire Strikes Back, The (1980)", "Aliens (1986)", "Babe (1995)", "Heat (1995)"]
INDEX = TitleIndex(TITLES)  # internal ids 1..5


def test_titles_are_compared_without_case_year_punctuation_or_article():
    assert normalise_title("Empire Strikes Back, The (1980)") == normalise_title("the EMPIRE strikes back!")
    assert normalise_title("Toy Story (1995) [Animation]") == "toy story"


def test_candidate_numbers_come_first():
    result = ground_text("3, 1 and 2", [5, 4, 3], 3, INDEX, blocked=set(), catalogue=None)
    assert result.items == [3, 5, 4] and result.stages == ["index"] * 3
    listed = ground_text("1. Heat\n2. Babe", [5, 4], 2, INDEX, blocked=set(), catalogue=None)
    assert listed.items == [5, 4] and listed.stages == ["index", "index"]


def test_titles_then_fuzzy_titles():
    answer = "The Empire Strikes Back\nAlienz"
    result = ground_text(answer, [2, 3], 2, INDEX, blocked=set(), catalogue=None)
    assert result.items == [2, 3] and result.stages == ["title", "fuzzy"]


def test_history_items_and_non_candidates_are_refused_where_required():
    blocked = ground_text("Toy Story, Heat", [5, 1], 2, INDEX, blocked={1}, catalogue=None)
    assert blocked.items == [5]
    outside = ground_text("Babe", [5], 1, INDEX, blocked=set(), catalogue=None)
    assert outside.items == [] and outside.pending == ["Babe"]  # C: candidates only
    open_catalogue = ground_text("Babe", [5], 1, INDEX, blocked=set(), catalogue={1, 2, 3, 4, 5})
    assert open_catalogue.items == [4] and open_catalogue.stages == ["title"]  # F and R: any unseen pool item


def test_numbers_out_of_range_and_years_are_not_indices():
    result = ground_text("1995, 42", [5, 4], 2, INDEX, blocked=set(), catalogue=None)
    assert result.items == []


def test_leftover_text_goes_to_the_nearest_candidate_in_embedding_space():
    vectors = np.eye(6, dtype=np.float32)  # item i is the i-th unit vector
    grounding = ground_text("a very cozy pig movie", [2, 4], 1, INDEX, blocked=set(), catalogue=None)
    assert grounding.items == [] and grounding.pending == ["a very cozy pig movie"]
    ground_embeddings([grounding], [[2, 4]], vectors[[4]], vectors)
    assert grounding.items == [4] and grounding.stages == ["embedding"]


def test_garbage_grounds_nothing():
    for answer in ("", "?!  ...", "   \n  "):
        result = ground_text(answer, [1, 2], 2, INDEX, blocked=set(), catalogue={1, 2, 3})
        assert result.items == [] and result.pending == []


def test_a_grounding_stops_at_what_is_needed():
    grounding = Grounding(need=1)
    grounding.add(3, "index")
    grounding.add(4, "index")
    assert grounding.items == [3] and grounding.complete


def test_a_numbered_list_of_titles_is_read_by_title():
    # Small models enumerate their picks ("1. ..., 2. ...") instead of quoting candidate numbers.
    answer = "1. Heat (1995) [Action]\n2. Aliens (1986) [Sci-Fi\n3. Babe"
    result = ground_text(answer, [5, 4, 3], 3, INDEX, blocked=set(), catalogue=None)
    assert result.items == [5, 3, 4] and result.stages == ["index", "title", "title"]  # 1 agrees, 2 and 3 do not


def test_a_cut_answer_and_a_preamble_are_handled():
    answer = "The user will most likely enjoy the following movies:\n1. Alienz (19"
    result = ground_text(answer, [4, 3], 2, INDEX, blocked=set(), catalogue=None)
    assert result.items == [3] and result.stages == ["fuzzy"] and result.pending == []
