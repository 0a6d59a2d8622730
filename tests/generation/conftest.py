"""Fixtures of the generator tests: a tiny local language model and prepared tiny datasets.

The tiny model is a 2-layer Llama (hidden size 32) with a byte-level BPE tokenizer
trained here on the item titles and the prompt words; it is saved with
``save_pretrained`` and loaded through :func:`load_language_model`, the path users take.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "A user recently enjoyed these items, oldest first: Candidate items: Which candidates will the user most "
    "likely enjoy next? Answer with candidate numbers separated by commas. Find a substitute with the same appeal "
    "for each of these items. dislike contradict tastes Reply with exactly numbers between and nothing else",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 , . : - [ ] ( )",
] + [f"Item number {i} genre{i % 5} Marker item {i} Secret test {i}" for i in range(1, 200)]


def save_tiny_language_model(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama and its tokenizer, written with ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny language model (session-wide: built once)."""
    return save_tiny_language_model(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture
def make_tiny_lm():
    """:func:`save_tiny_language_model`, for tests that need a model folder of their own."""
    return save_tiny_language_model


def write_marker_dataset(root: Path, name: str = "marked", n_users: int = 12, n_items: int = 25) -> Path:
    """Users whose last two items (validation, test) are unique marker items no other row contains."""
    rng = random.Random(1)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows, items = [], [f"i{i}\tItem number {i}\tgenre{i % 5}" for i in range(1, n_items + 1)]
    for user in range(1, n_users + 1):
        length = rng.randint(6, 12)
        sequence = [f"i{rng.randint(1, n_items)}" for _ in range(length)]
        sequence += [f"val{user}", f"test{user}"]
        items += [f"val{user}\tMarker item {user}\tgenre9", f"test{user}\tSecret test {user}\tgenre9"]
        rows += [f"u{user}\t{item}\t{1_000_000 + user * 1000 + step}" for step, item in enumerate(sequence)]
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    (folder / f"{name}.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n" + "\n".join(items) + "\n")
    return root


def prepare(dataset: str, data_path: Path, **overrides: Any) -> tuple[Any, Any, Any]:
    """``(config, dataset, train_dataset)`` the way the command line builds them, with LUMOS's config."""
    from recbole.data import create_dataset, data_preparation

    import recbole_lumos.compat  # noqa: F401
    from recbole_lumos.config import build_config

    values = {
        "data_path": str(data_path),
        "show_progress": False,
        "MAX_ITEM_LIST_LENGTH": 10,
        "lumos_num_candidates": 8,
        "lumos_prompt_history": 5,
        "lumos_max_new_tokens": 6,
        "lumos_gen_batch_size": 8,
        "lumos_embed_batch_size": 16,
        "lumos_cache_dir": str(data_path.parent / "views"),
        "lumos_item_encoder": "lm",  # the tiny model embeds items unless a test asks for a sentence encoder
        **overrides,
    }
    config = build_config("LUMOS", dataset, overrides=values)
    full = create_dataset(config)
    train_data, _, _ = data_preparation(config, full)
    return config, full, train_data._dataset


@pytest.fixture
def marker_data(tmp_path: Path) -> Path:
    """``data_path`` holding the ``marked`` dataset (see :func:`write_marker_dataset`)."""
    return write_marker_dataset(tmp_path / "data")


@pytest.fixture(name="prepare")
def prepare_fixture():
    """:func:`prepare`: ``(config, dataset, train_dataset)`` for a dataset folder and overrides."""
    return prepare
