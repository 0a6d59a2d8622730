"""Item embeddings: a truncated view of the language model, padding-independent, cached."""

from __future__ import annotations

import numpy as np
import torch

from recbole_lumos.generation.embedding import TextEncoder, item_embeddings
from recbole_lumos.generation.language_model import load_language_model
from recbole_lumos.generation.settings import GeneratorSettings

TEXTS = ["Item number 1 (genre1)", "Item number 22", "Marker item 3 (genre9, genre2, genre3)"]


def test_truncation_stops_after_the_requested_layer(tiny_lm):
    model, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    encoder = TextEncoder(model, tokenizer, layers=1, max_tokens=32, batch_size=4)
    got = encoder.encode(TEXTS[:1])
    ids = tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.inference_mode():
        hidden = model.model(**ids, output_hidden_states=True).hidden_states[1]  # after the first block
        expected = torch.nn.functional.normalize(model.model.norm(hidden).mean(1), dim=-1)
    assert np.allclose(got, expected.numpy(), atol=1e-5)
    full = TextEncoder(model, tokenizer, layers=2, max_tokens=32, batch_size=4).encode(TEXTS[:1])
    assert not np.allclose(got, full, atol=1e-4)


def test_embeddings_do_not_depend_on_the_batch_or_padding(tiny_lm):
    model, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    batched = TextEncoder(model, tokenizer, layers=1, max_tokens=32, batch_size=3).encode(TEXTS)
    alone = TextEncoder(model, tokenizer, layers=1, max_tokens=32, batch_size=1).encode(TEXTS)
    assert np.allclose(batched, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)


def test_max_tokens_truncates_the_text(tiny_lm):
    model, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    short = TextEncoder(model, tokenizer, layers=1, max_tokens=2, batch_size=2)
    assert np.allclose(short.encode(["Item number 1"]), short.encode(["Item number 1 and much more"]), atol=1e-6)


def test_item_embeddings_are_computed_once(tiny_lm, tmp_path):
    settings = GeneratorSettings(dataset="tiny", lumos_llm=str(tiny_lm), lumos_embed_layers=1, show_progress=False)
    calls = []

    def encoder():
        calls.append(1)
        model, tokenizer = load_language_model(settings)
        return TextEncoder(model, tokenizer, layers=1, max_tokens=32, batch_size=2)

    first, timing = item_embeddings(settings, TEXTS, tmp_path, encoder)
    second, cached = item_embeddings(settings, TEXTS, tmp_path, encoder)
    assert calls == [1] and np.array_equal(first, second) and cached["embedding_seconds"] == 0.0
    _, _ = item_embeddings(settings, [*TEXTS[:2], "changed text"], tmp_path, encoder)
    assert calls == [1, 1]  # other texts, other key
