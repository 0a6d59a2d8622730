"""Prompt mode: one chat prompt per user and view, answered with candidate numbers (docs/design.md §2.2).

A prompt shows the user's recent *training* titles (``lumos_prompt_history``, with
genres or categories) and an indexed candidate list (``lumos_num_candidates``). The
candidates come from the :class:`~recbole_lumos.generation.semantic.ViewPlan`:
text-embedding neighbours of the history (F: of the intent vector, R: of the items
to replace) or items far from the user's profile (C; C2, C3, ... when
``lumos_num_counterfactuals`` is above 1, each with its own draw of far candidates and the
same question, so the ``n_c`` answers differ). **Privacy guard**: nothing in
a prompt is computed from other users' interactions (no popularity, no
co-occurrence); only the user's own history and the catalogue's texts.

Prompts are decoded greedily in batches with left padding. Changing the wording
changes the answers: bump ``lumos_prompt_version`` (part of the cache key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from recbole_lumos.generation.item_text import ItemTexts
from recbole_lumos.generation.semantic import ViewPlan

SYSTEM = "You are the recommendation assistant on a user's own device. You answer only with candidate numbers."


def _line(texts: ItemTexts, item: int) -> str:
    return texts.describe(item - 1)


def view_request(view: str, plan: ViewPlan) -> tuple[int, list[int]]:
    """``(items wanted, candidates)`` of a view's prompt; every counterfactual (C, C2, ...) fills ``c_positions``."""
    need = {"F": len(plan.f_items), "R": len(plan.r_positions)}.get(view, len(plan.c_positions))
    return need, plan.candidates.get(view, [])


def build_messages(
    view: str, plan: ViewPlan, texts: ItemTexts, history_size: int, *, strict: bool = False
) -> list[dict]:
    """The chat messages of one user's prompt for ``view`` (F, R, or a counterfactual: C, C2, ...)."""
    noun = texts.noun
    need, candidates = view_request(view, plan)
    recent = [int(i) for i in plan.history[-history_size:]]
    lines = [f"A user recently enjoyed these {noun}, oldest first:"]
    lines += [f"- {_line(texts, item)}" for item in recent]
    if view == "R":
        replaced = [int(plan.recent[p]) for p in plan.r_positions]
        lines += ["", f"Find a substitute with the same appeal for each of these {noun}:"]
        lines += [f"- {_line(texts, item)}" for item in replaced]
    lines += ["", f"Candidate {noun}:"]
    lines += [f"{n}. {_line(texts, item)}" for n, item in enumerate(candidates, start=1)]
    lines.append("")
    if view == "F":
        lines.append(f"Which {need} candidates will the user most likely enjoy next?")
    elif view == "R":
        lines.append(f"Which {need} candidates are the closest substitutes, one per {noun[:-1]} above, in order?")
    else:
        lines.append(f"Which {need} candidates would this user dislike most, because they contradict these tastes?")
    lines.append(f"Answer with {need} candidate numbers separated by commas.")
    if strict:
        example = ", ".join(str(n) for n in range(2, 2 * need + 1, 2)[:need]) or "1"
        lines.append(
            f"Reply with exactly {need} numbers between 1 and {len(candidates)} and nothing else, e.g. {example}"
        )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def render(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text through the tokenizer's chat template (a plain transcript when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    transcript = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return transcript + "Assistant:"


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to ``prompts`` (same order), decoded ``batch_size`` at a time with left padding.

    Prompts are sorted by length first so a batch wastes little padding.
    """
    if not prompts:
        return []
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = tokenizer(
                [prompts[i] for i in chosen], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            for i, text in zip(chosen, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
            if on_batch is not None:
                on_batch(len(chosen))
    return answers
