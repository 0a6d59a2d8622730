"""Prompts: the user's training titles and numbered candidates; batched greedy answers with left padding."""

from __future__ import annotations

import numpy as np

from recbole_lumos.generation.item_text import ItemTexts
from recbole_lumos.generation.language_model import load_language_model
from recbole_lumos.generation.prompt import build_messages, generate_answers, render
from recbole_lumos.generation.semantic import ViewPlan

TEXTS = ItemTexts(
    tokens=[f"i{i}" for i in range(1, 9)],
    titles=[f"Item number {i}" for i in range(1, 9)],
    genres=[f"genre{i % 5}" for i in range(1, 9)],
    noun="items",
    source=None,
)


def plan() -> ViewPlan:
    history = np.array([1, 2, 3, 4])
    return ViewPlan(
        user="u1",
        history=history,
        recent=history,
        f_keep=history[-3:],
        r_positions=[1],
        c_positions=[3],
        f_items=[5, 6],
        r_items=[7],
        c_items=[8],
        candidates={"F": [6, 5, 7], "R": [7, 8], "C": [8]},
    )


def test_a_prompt_shows_recent_history_and_numbered_candidates():
    messages = build_messages("F", plan(), TEXTS, history_size=3)
    text = messages[-1]["content"]
    assert "Item number 1" not in text  # only the last 3 history items
    assert "- Item number 2 [genre2]" in text and "1. Item number 6 [genre1]" in text and "3. Item number 7" in text
    assert "Which 2 candidates" in text
    r_text = build_messages("R", plan(), TEXTS, history_size=3)[-1]["content"]
    assert "substitute" in r_text and r_text.count("Item number 2") == 2  # in the history and to replace
    strict = build_messages("C", plan(), TEXTS, history_size=3, strict=True)[-1]["content"]
    assert "Reply with exactly 1 numbers between 1 and 1" in strict


def test_batched_answers_equal_one_by_one_answers(tiny_lm):
    model, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    prompts = [
        render(tokenizer, build_messages(view, plan(), TEXTS, history_size=size))
        for view, size in (("F", 1), ("R", 4), ("C", 2))
    ]
    batched = generate_answers(model, tokenizer, prompts, batch_size=3, max_new_tokens=5)
    alone = [generate_answers(model, tokenizer, [p], batch_size=1, max_new_tokens=5)[0] for p in prompts]
    assert batched == alone and all(isinstance(a, str) for a in batched)


def test_a_tokenizer_without_chat_template_gets_a_transcript():
    class Plain:
        chat_template = None

    text = render(Plain(), [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text == "System: S\nUser: U\nAssistant:"


def test_a_further_counterfactual_asks_the_counterfactual_question_over_its_own_candidates():
    further = plan()
    further.c_extra, further.candidates["C2"] = [[6]], [6, 5]
    text = build_messages("C2", further, TEXTS, history_size=3)[-1]["content"]
    assert "dislike" in text and "1. Item number 6" in text and "2. Item number 5" in text
    assert "Which 1 candidates" in text  # one per replaced position, as for C
