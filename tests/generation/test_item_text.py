"""Item texts from the .item atomic file: title (year) and genres or categories."""

from __future__ import annotations

import pytest

from recbole_lumos.errors import AtomicFileError
from recbole_lumos.generation.item_text import read_item_texts, split_categories


def test_movielens_titles_carry_year_and_genres(tmp_path):
    path = tmp_path / "ml-100k.item"  # the layout of ml-100k's .item file (RecBole's class:token_seq genres)
    path.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    )
    texts = read_item_texts(path, ["1", "2"])
    assert texts.titles[0] == "Toy Story (1995)"
    assert texts.genres[0] == "Animation, Children's, Comedy"
    assert texts.texts[0] == "Toy Story (1995) (Animation, Children's, Comedy)"
    assert texts.describe(0) == "Toy Story (1995) [Animation, Children's, Comedy]" and texts.noun == "movies"


def test_amazon_categories_and_items_without_a_row(tmp_path):
    path = tmp_path / "shop.item"
    path.write_text(
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\n"
        "B1\tLip Balm 3-pack\t'Beauty', 'Skin Care', 'Men's Lips', 'Beauty'\tAcme\n"
        "B2\t\t\t\n"
    )
    texts = read_item_texts(path, ["B1", "B2", "B3"])
    assert texts.titles == ["Lip Balm 3-pack", "B2", "B3"]  # no title, no row: the token stands in
    assert texts.genres[0] == "Beauty, Skin Care, Men's Lips" and texts.noun == "products"


def test_split_categories():
    assert split_categories("Action Sci-Fi") == ["Action", "Sci-Fi"]
    assert split_categories("'A', 'B & C'") == ["A", "B & C"]
    assert split_categories("") == []


def test_a_missing_item_file_says_which(tmp_path):
    with pytest.raises(AtomicFileError, match="tiny.item"):
        read_item_texts(tmp_path / "tiny.item", ["1"])


def test_a_missing_title_column_says_which(tmp_path):
    path = tmp_path / "tiny.item"
    path.write_text("item_id:token\tprice:float\n1\t3.5\n")
    with pytest.raises(AtomicFileError, match="no title column") as error:
        read_item_texts(path, ["1"])
    assert str(path) in str(error.value) and "movie_title" in str(error.value)
