"""Converters of the original public datasets, on tiny archives in the original layout.

Nothing here touches the network: archives are built in ``tmp_path`` and
``urllib.request.urlopen`` is replaced wherever a download is exercised.
"""

from __future__ import annotations

import calendar
import gzip
import io
import json
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from recbole_lumos.data.sources import (
    SOURCES,
    DatasetSource,
    RawFile,
    get_source,
    prepare_dataset,
)
from recbole_lumos.data.sources.atomic import read_atomic, write_atomic
from recbole_lumos.data.sources.download import DownloadError, download_file
from recbole_lumos.data.sources.movielens import split_title_year
from recbole_lumos.errors import DatasetNotFoundError, LumosError

# ----------------------------------------------------------------------------- helpers


def _zip(path: Path, members: dict[str, bytes], folders: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for folder in folders:
            zf.writestr(folder, b"")  # the directory entry the real archives carry
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _gz_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


ML100K_GENRE = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
    "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\n"
    "Mystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"
)


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def _ml100k_archive(path: Path) -> Path:
    data = (
        "196\t242\t3\t881250949\n"
        "186\t302\t3\t891717742\n"
        "196\t302\t4\t881250000\n"
        "22\t242\t1\t878887116\n"
        "186\t242\t5\t891717742\n"
    )
    item = (
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{_flags(3, 4, 5)}\n"
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags(5)}\n"
        f"302|Misérables, Les (1995)|01-Jan-1995||http://x|{_flags(8, 17)}\n"
        f"267|unknown||||{_flags(0)}\n"
        f"1412|Land Before Time III: The Time of the Great Giving (V)|01-Jan-1995||http://x|{_flags(3)}\n"
    )
    user = "22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n"
    return _zip(
        path,
        {
            "ml-100k/u.data": data.encode(),
            "ml-100k/u.item": item.encode("latin-1"),
            "ml-100k/u.user": user.encode(),
            "ml-100k/u.genre": ML100K_GENRE.encode(),
            "ml-100k/README": b"readme",
        },
        folders=("ml-100k/",),
    )


def _ml1m_archive(path: Path) -> Path:
    ratings = (
        "1::1193::5::978300760\n"
        "1::661::3::978302109\n"
        "1::914::3::978301968\n"
        "2::1193::4::978298413\n"
        "2::661::2::978299000\n"
        "2::914::5::978299000\n"
        "3::914::4::978297039\n"
        "3::1193::1::978297100\n"
        "3::2::3::978297200\n"
    )
    movies = (
        "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "914::My Fair Lady (1964)::Musical|Romance\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2019::Seven Samurai (The Magnificent Seven) (Shichinin no samurai) (1954)::Action|Drama\n"
        "3::Misérables, Les (1995)::Drama\n"
    )
    users = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
    return _zip(
        path,
        {
            "ml-1m/ratings.dat": ratings.encode(),
            "ml-1m/movies.dat": movies.encode("latin-1"),
            "ml-1m/users.dat": users.encode(),
            "ml-1m/README": b"readme",
        },
        folders=("ml-1m/",),
    )


def _raw_dir(data_path: Path, name: str) -> Path:
    return data_path / name / "raw"


# -------------------------------------------------------------------------- MovieLens


def test_ml_100k(tmp_path: Path) -> None:
    _ml100k_archive(_raw_dir(tmp_path, "ml-100k") / "ml-100k.zip")
    out = prepare_dataset("ml-100k", tmp_path, download=False)
    assert out == tmp_path / "ml-100k"
    assert _lines(out / "ml-100k.inter") == [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        "196\t302\t4\t881250000",  # grouped by user, sorted by time
        "196\t242\t3\t881250949",
        "186\t302\t3\t891717742",  # equal times keep file order
        "186\t242\t5\t891717742",
        "22\t242\t1\t878887116",
    ]
    assert _lines(out / "ml-100k.item") == [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
        "1\tToy Story\t1995\tAnimation Children's Comedy",
        "242\tKolya\t1996\tComedy",
        "302\tMisérables, Les\t1995\tDrama War",  # latin-1 decoded
        "267\tunknown\t\tunknown",
        "1412\tLand Before Time III: The Time of the Great Giving (V)\t1995\tAnimation",
    ]
    assert _lines(out / "ml-100k.user") == [
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
        "22\t25\tM\twriter\t40206",
        "186\t39\tF\texecutive\t00000",
        "196\t49\tM\twriter\t55105",
    ]
    # nothing but the atomic files and the raw archive is left behind
    assert _files(out) == [
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
        "raw",
        "raw/ml-100k.zip",
    ]


def test_ml_1m(tmp_path: Path) -> None:
    _ml1m_archive(_raw_dir(tmp_path, "ml-1m") / "ml-1m.zip")
    out = prepare_dataset("ml-1m", tmp_path, download=False)
    assert _lines(out / "ml-1m.inter") == [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        "1\t1193\t5\t978300760",
        "1\t914\t3\t978301968",
        "1\t661\t3\t978302109",
        "2\t1193\t4\t978298413",
        "2\t661\t2\t978299000",
        "2\t914\t5\t978299000",
        "3\t914\t4\t978297039",
        "3\t1193\t1\t978297100",
        "3\t2\t3\t978297200",
    ]
    assert _lines(out / "ml-1m.item") == [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
        "2\tJumanji\t1995\tAdventure Children's Fantasy",
        "661\tJames and the Giant Peach\t1996\tAnimation Children's Musical",
        "914\tMy Fair Lady\t1964\tMusical Romance",
        "1193\tOne Flew Over the Cuckoo's Nest\t1975\tDrama",
        "2019\tSeven Samurai (The Magnificent Seven) (Shichinin no samurai)\t1954\tAction Drama",
        "3\tMisérables, Les\t1995\tDrama",
    ]
    assert _lines(out / "ml-1m.user") == [
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
        "1\t1\tF\t10\t48067",
        "2\t56\tM\t16\t70072",
        "3\t25\tM\t15\t55117",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", "1995")),
        (
            "Bicycle Thief, The (Ladri di biciclette) (1948)",
            ("Bicycle Thief, The (Ladri di biciclette)", "1948"),
        ),
        ("unknown", ("unknown", "")),
        ("(1995)", ("(1995)", "")),
        ("Kolya (1996) ", ("Kolya", "1996")),
    ],
)
def test_split_title_year(raw: str, expected: tuple[str, str]) -> None:
    assert split_title_year(raw) == expected


def _recbole_dataset(data_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load converted files the way RecBole does (SASRec, default evaluation)."""
    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.setattr(sys, "argv", ["x"])  # RecBole parses the command line
    config = Config(
        model="SASRec",
        dataset=name,
        config_dict={
            "data_path": str(data_path),
            "load_col": None,
            "train_neg_sample_args": None,
            "checkpoint_dir": str(data_path / "saved"),
            "show_progress": False,
        },
    )
    return create_dataset(config)


def test_recbole_loads_converted_ml_1m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ml1m_archive(_raw_dir(tmp_path, "ml-1m") / "ml-1m.zip")
    prepare_dataset("ml-1m", tmp_path, download=False)
    dataset = _recbole_dataset(tmp_path, "ml-1m", monkeypatch)
    assert dataset.user_num == 3 + 1  # + padding
    assert dataset.item_num == 6 + 1  # every movie of .item, rated or not
    assert dataset.inter_num == 9
    assert "movie_title" in dataset.item_feat.columns
    assert "occupation" in dataset.user_feat.columns
    assert "Misérables," in list(dataset.field2id_token["movie_title"])


# ----------------------------------------------------------------------------- Amazon

AMAZON_2014 = {
    "amazon-beauty": "Beauty",
    "amazon-cell-phones": "Cell_Phones_and_Accessories",
    "amazon-baby": "Baby",
    "amazon-toys": "Toys_and_Games",
    "amazon-sports": "Sports_and_Outdoors",
}


def _review(user: str, item: str, rating: float, when: int) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "reviewerName": "Some One",
            "helpful": [0, 0],
            "reviewText": "Great\tstuff.\nReally.",
            "overall": rating,
            "summary": "ok",
            "unixReviewTime": when,
            "reviewTime": "05 28, 2013",
        }
    )


@pytest.mark.parametrize("name", sorted(AMAZON_2014))
def test_amazon_2014(tmp_path: Path, name: str) -> None:
    category = AMAZON_2014[name]
    source = get_source(name)
    assert source is not None
    base = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
    assert source.raw_files == (
        RawFile(f"{base}/reviews_{category}_5.json.gz", f"reviews_{category}_5.json.gz"),
        RawFile(f"{base}/meta_{category}.json.gz", f"meta_{category}.json.gz"),
    )
    raw = _raw_dir(tmp_path, name)
    _gz_lines(
        raw / f"reviews_{category}_5.json.gz",
        [
            _review("U2", "B1", 4.0, 1300000200),
            _review("U1", "B2", 5.0, 1369699200),
            _review("U1", "B1", 3.0, 1369000000),
            _review("U2", "B3", 1.0, 1300000100),
        ],
    )
    meta = [
        # 2014 metadata is Python literals: single quotes, apostrophes in double quotes
        repr(
            {
                "asin": "B9",
                "title": "Not reviewed",
                "categories": [["Other"]],
            }
        ),
        repr(
            {
                "asin": "B1",
                "title": "L'Oreal\tLip Gloss\nRed",
                "price": 12.99,
                "imUrl": "http://ecx.images-amazon.com/images/I/x.jpg",
                "related": {"also_bought": ["B2"]},
                "salesRank": {"Beauty": 1234},
                "categories": [
                    ["Beauty", "Makeup", "Face"],
                    ["Beauty", "Makeup", "Lips"],
                ],
                "brand": "L'Oreal Paris",
            }
        ),
        repr({"asin": "B2", "categories": [["Beauty"]]}),  # no title, price, brand
        repr({"asin": "B3", "title": "Soap", "price": 3.0, "categories": [], "brand": ""}),
    ]
    assert "'asin'" in meta[0]  # really not JSON
    _gz_lines(raw / f"meta_{category}.json.gz", meta)

    out = prepare_dataset(name, tmp_path, download=False)
    assert _lines(out / f"{name}.inter") == [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        "U2\tB3\t1\t1300000100",
        "U2\tB1\t4\t1300000200",
        "U1\tB1\t3\t1369000000",
        "U1\tB2\t5\t1369699200",
    ]
    assert _lines(out / f"{name}.item") == [
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float",
        "B1\tL'Oreal Lip Gloss Red\t'Beauty', 'Makeup', 'Face', 'Lips'\tL'Oreal Paris\t12.99",
        "B2\t\t'Beauty'\t\t",
        "B3\tSoap\t\t\t3",
    ]
    assert not (out / f"{name}.user").exists()


def test_amazon_2018_beauty(tmp_path: Path) -> None:
    name = "amazon2018-beauty"
    source = get_source(name)
    assert source is not None
    assert [r.url for r in source.raw_files] == [
        "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/All_Beauty_5.json.gz",
        "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_All_Beauty.json.gz",
    ]
    raw = _raw_dir(tmp_path, name)
    _gz_lines(
        raw / "All_Beauty_5.json.gz",
        [
            json.dumps(
                {
                    "overall": 5.0,
                    "verified": True,
                    "reviewerID": "A1",
                    "asin": "X2",
                    "unixReviewTime": 1500000300,
                }
            ),
            json.dumps(
                {
                    "overall": 4.0,
                    "verified": True,
                    "reviewerID": "A1",
                    "asin": "X1",
                    "unixReviewTime": 1500000100,
                }
            ),
            # the 2018 files repeat some reviews verbatim: kept once
            json.dumps(
                {
                    "overall": 4.0,
                    "verified": True,
                    "reviewerID": "A1",
                    "asin": "X1",
                    "unixReviewTime": 1500000100,
                }
            ),
            json.dumps(
                {
                    "overall": 2.0,
                    "reviewerID": "A2",
                    "asin": "X1",
                    "unixReviewTime": 1400000000,
                }
            ),
        ],
    )
    _gz_lines(
        raw / "meta_All_Beauty.json.gz",
        [
            json.dumps(
                {
                    "asin": "X1",
                    "title": '<span class="a-size-medium">Shampoo &amp; Conditioner</span>',
                    "category": ["All Beauty", "Hair Care", "</span></span></span>"],
                    "brand": "Acme",
                    "price": "$1,299.50",
                }
            ),
            json.dumps({"asin": "X3", "title": "unreviewed", "category": [], "price": "$1.00"}),
            json.dumps(
                {
                    "asin": "X2",
                    "title": '"Best" Brush',
                    "category": [],
                    "price": "$5.00 - $9.00",
                }
            ),
            json.dumps({"asin": "X1", "title": "duplicate row", "category": [], "price": ""}),
        ],
    )
    out = prepare_dataset(name, tmp_path, download=False)
    assert _lines(out / f"{name}.inter") == [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        "A1\tX1\t4\t1500000100",
        "A1\tX2\t5\t1500000300",
        "A2\tX1\t2\t1400000000",
    ]
    assert _lines(out / f"{name}.item") == [
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float",
        "X1\tShampoo & Conditioner\t'All Beauty', 'Hair Care'\tAcme\t1299.5",
        'X2\t"""Best"" Brush"\t\t\t',  # a leading quote is CSV-quoted for pandas
    ]
    _, rows = read_atomic(out / f"{name}.item")
    assert rows[1][1] == '"Best" Brush'


def test_amazon_2018_registry_has_no_baby() -> None:
    names = {n for n in SOURCES if n.startswith("amazon2018-")}
    assert names == {"amazon2018-beauty", "amazon2018-cell-phones", "amazon2018-toys"}
    toys = SOURCES["amazon2018-toys"]
    assert [r.filename for r in toys.raw_files] == [
        "Toys_and_Games_5.json.gz",
        "meta_Toys_and_Games.json.gz",
    ]


# ------------------------------------------------------------------------------- MIND


def _utc(text: str) -> int:
    from datetime import datetime

    return calendar.timegm(datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p").timetuple())


def _mind_archive(path: Path) -> Path:
    behaviors = (
        "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN3-1 N4-0\n"
        "2\tU2\t11/12/2019 1:00:00 PM\t\tN4-1 N5-1\n"
        "3\tU1\t11/10/2019 8:00:00 AM\tN1 N2\tN2-1 N5-0\n"
        "4\tU1\t11/13/2019 10:00:00 PM\tN1 N2\tN3-1 N6-1\n"
    )
    news = "".join(
        f"{nid}\t{cat}\t{sub}\t{title}\tAbstract of {nid}.\thttps://assets.msn.com/{nid}\t[]\t[]\n"
        for nid, cat, sub, title in [
            ("N1", "lifestyle", "lifestyleroyals", "The Brands Queen Elizabeth Loves"),
            ("N2", "news", "newsus", '"Jeopardy!" champion returns'),
            ("N3", "sports", "football_nfl", "Bills  beat Dolphins"),
            ("N4", "health", "medical", "Flu season"),
            ("N5", "finance", "markets", "Stocks rise"),
            ("N6", "travel", "travelnews", "Best trips"),
            ("N7", "video", "viral", "Never seen"),
        ]
    )
    return _zip(path, {"behaviors.tsv": behaviors.encode(), "news.tsv": news.encode()})


def test_mind_small(tmp_path: Path) -> None:
    _mind_archive(_raw_dir(tmp_path, "mind-small") / "MINDsmall_train.zip")
    out = prepare_dataset("mind-small", tmp_path, download=False)
    t0 = _utc("11/10/2019 08:00:00 AM")  # U1's earliest impression
    assert _lines(out / "mind-small.inter") == [
        "user_id:token\titem_id:token\ttimestamp:float",
        f"U1\tN1\t{t0 - 2}",  # history, in order, just before t0
        f"U1\tN2\t{t0 - 1}",  # its click at t0 is a repeat: dropped
        f"U1\tN3\t{_utc('11/11/2019 09:05:58 AM')}",  # the second N3 click is dropped
        f"U1\tN6\t{_utc('11/13/2019 10:00:00 PM')}",
        f"U2\tN4\t{_utc('11/12/2019 01:00:00 PM')}",  # empty history, two clicks
        f"U2\tN5\t{_utc('11/12/2019 01:00:00 PM')}",
    ]
    assert t0 == 1573372800
    assert _lines(out / "mind-small.item") == [
        "item_id:token\ttitle:token_seq\tcategory:token\tsubcategory:token",
        "N1\tThe Brands Queen Elizabeth Loves\tlifestyle\tlifestyleroyals",
        'N2\t"""Jeopardy!"" champion returns"\tnews\tnewsus',
        "N3\tBills beat Dolphins\tsports\tfootball_nfl",
        "N4\tFlu season\thealth\tmedical",
        "N5\tStocks rise\tfinance\tmarkets",
        "N6\tBest trips\ttravel\ttravelnews",
    ]


def test_recbole_loads_converted_mind_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mind_archive(_raw_dir(tmp_path, "mind-small") / "MINDsmall_train.zip")
    prepare_dataset("mind-small", tmp_path, download=False)
    dataset = _recbole_dataset(tmp_path, "mind-small", monkeypatch)
    assert (dataset.user_num, dataset.item_num, dataset.inter_num) == (3, 7, 6)
    titles = list(dataset.field2id_token["title"])
    assert '"Jeopardy!"' in titles  # the CSV-quoted title is read back verbatim
    assert "Bills" in titles and "" not in titles


# ------------------------------------------------------------------ prepare_dataset


def test_existing_atomic_files_are_used_as_they_are(tmp_path: Path) -> None:
    own = tmp_path / "my-data"
    own.mkdir()
    (own / "my-data.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    assert prepare_dataset("my-data", tmp_path, download=False) == own
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ml-1m.inter").write_text("user_id:token\titem_id:token\n")
    assert prepare_dataset("ml-1m", tmp_path, download=True) == tmp_path / "ml-1m"
    assert _files(tmp_path / "ml-1m") == ["ml-1m.inter"]


def test_missing_raw_files_offline(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("amazon-beauty", tmp_path, download=False)
    message = str(info.value)
    where = (tmp_path / "amazon-beauty").absolute()
    assert "\n" not in message
    assert f"{where}/" in message
    assert f"{where / 'raw'}/" in message
    assert "amazon-beauty.inter" in message and "amazon-beauty.item" in message
    for raw in SOURCES["amazon-beauty"].raw_files:
        assert raw.filename in message and raw.url in message
    assert "--data_path=DIR" in message
    assert isinstance(info.value, LumosError)
    assert not (tmp_path / "amazon-beauty").exists()


def test_unknown_name_lists_known_sources(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("no-such-set", tmp_path)
    message = str(info.value)
    assert "no-such-set" in message
    assert str((tmp_path / "no-such-set").absolute()) in message
    for name in SOURCES:
        assert name in message
    assert "--data_path=DIR" in message


def test_failed_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def offline(request: urllib.request.Request, timeout: float = 0) -> None:
        calls.append(request.full_url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data_path = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("ml-1m", data_path, timeout=1.0)
    message = str(info.value)
    assert calls == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    assert "name resolution" in message
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message
    assert f"{(data_path / 'ml-1m' / 'raw').absolute()}/" in message
    assert not data_path.exists()  # the folders it made for the download are gone too


class _Response(io.BytesIO):
    """What urlopen returns, enough for download_file: read(), headers, a context."""

    def __init__(self, body: bytes, *, fail_after: int | None = None, length: int | None = None) -> None:
        super().__init__(body)
        self.fail_after = fail_after
        self.headers = {"Content-Length": str(len(body) if length is None else length)}

    def read(self, size: int | None = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 8) if size and size > 0 else size)


def test_interrupted_download_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda req, timeout=0: _Response(b"x" * 64, fail_after=16),
    )
    dest = tmp_path / "raw" / "file.zip"
    with pytest.raises(DownloadError):
        download_file("https://example.invalid/file.zip", dest)
    assert _files(tmp_path) == ["raw"]

    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda req, timeout=0: _Response(b"x" * 10, length=64),
    )
    with pytest.raises(DownloadError, match="10 of 64"):
        download_file("https://example.invalid/file.zip", dest)
    assert _files(tmp_path) == ["raw"]


def test_interrupted_second_download_keeps_complete_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(request: urllib.request.Request, timeout: float = 0) -> _Response:
        if "meta_" in request.full_url:
            return _Response(b"y" * 64, fail_after=16)
        return _Response(b"reviews")

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        prepare_dataset("amazon-baby", tmp_path)
    assert _files(tmp_path) == [
        "amazon-baby",
        "amazon-baby/raw",
        "amazon-baby/raw/reviews_Baby_5.json.gz",
    ]


def test_download_then_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _ml100k_archive(tmp_path / "served" / "ml-100k.zip").read_bytes()
    seen: list[tuple[str, float]] = []

    def serve(request: urllib.request.Request, timeout: float = 0) -> _Response:
        seen.append((request.full_url, timeout))
        return _Response(body)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    out = prepare_dataset("ml-100k", tmp_path / "data", timeout=7.0)
    assert seen == [("https://files.grouplens.org/datasets/movielens/ml-100k.zip", 7.0)]
    assert (out / "raw" / "ml-100k.zip").read_bytes() == body
    assert _lines(out / "ml-100k.inter")[1] == "196\t302\t4\t881250000"
    # second call: atomic files exist, no download
    assert prepare_dataset("ml-100k", tmp_path / "data", timeout=7.0) == out
    assert len(seen) == 1


def test_corrupt_raw_file_writes_no_atomic_files(tmp_path: Path) -> None:
    raw = _raw_dir(tmp_path, "ml-1m")
    raw.mkdir(parents=True)
    (raw / "ml-1m.zip").write_bytes(b"this is not a zip")
    with pytest.raises(DatasetNotFoundError, match="could not be read"):
        prepare_dataset("ml-1m", tmp_path, download=False)
    assert _files(tmp_path / "ml-1m") == ["raw", "raw/ml-1m.zip"]

    # an archive that lacks a member leaves nothing either
    _zip(
        raw / "ml-1m.zip",
        {
            "ml-1m/ratings.dat": b"1::2::3::4\n",
            "ml-1m/movies.dat": b"2::X (1990)::Drama\n",
        },
    )
    with pytest.raises(DatasetNotFoundError, match="users.dat"):
        prepare_dataset("ml-1m", tmp_path, download=False)
    assert _files(tmp_path / "ml-1m") == ["raw", "raw/ml-1m.zip"]


# ------------------------------------------------------------------- registry, writer


def test_registry() -> None:
    assert set(SOURCES) == {
        "ml-100k",
        "ml-1m",
        *AMAZON_2014,
        "amazon2018-beauty",
        "amazon2018-cell-phones",
        "amazon2018-toys",
        "mind-small",
    }
    for name, source in SOURCES.items():
        assert isinstance(source, DatasetSource)
        assert source.name == name and source.homepage.startswith("http") and source.license_note
        assert source.raw_files and all(r.url.endswith("/" + r.filename) for r in source.raw_files)
    assert get_source("nope") is None
    assert SOURCES["ml-1m"].atomic_filenames() == [
        "ml-1m.inter",
        "ml-1m.item",
        "ml-1m.user",
    ]
    assert SOURCES["mind-small"].raw_files == (
        RawFile(
            "https://mind201910small.blob.core.windows.net/release/MINDsmall_train.zip",
            "MINDsmall_train.zip",
        ),
    )


def test_write_atomic(tmp_path: Path) -> None:
    path = write_atomic(
        tmp_path / "x.item",
        [("item_id", "token"), ("title", "token_seq"), ("price", "float")],
        [
            ("a", "one\ttwo\nthree  four", 1.0),
            ("b", None, float("nan")),
            ("c", 'say "hi"', 0.25),
        ],
    )
    assert _lines(path) == [
        "item_id:token\ttitle:token_seq\tprice:float",
        "a\tone two three four\t1",
        "b\t\t",
        'c\tsay "hi"\t0.25',
    ]
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        write_atomic(
            tmp_path / "y.item",
            [("a", "token"), ("b", "token"), ("c", "float")],
            [("1", "2")],
        )
    assert _files(tmp_path) == ["x.item"]  # no temporary file left
    with pytest.raises(ValueError, match="unknown atomic field type"):
        write_atomic(tmp_path / "z.item", [("a", "int")], [])
