"""``ensure_views``: every user's F, R and C views, from the cache or generated (docs/design.md §2.1-2.2).

With ``lumos_num_counterfactuals = n_c > 1`` each user also gets C2 ... C{n_c}. In
prompt mode every counterfactual is its own prompt, with its own candidate list (other
far items, in another order): the answer stays a short list of numbers that a small
model writes reliably within ``lumos_max_new_tokens``, greedy decoding stays
deterministic, and grounding, the one stricter retry and the semantic fallback work
per counterfactual exactly as for C (an unparseable answer costs one view, not all).
One prompt asking for ``n_c`` lists would need ``n_c`` times the answer length and a
structure that 135M-parameter models follow poorly; sampling seeds would make
prompt views depend on the sampler. The cost is ``2 + n_c`` prompts per user.

Data flows one way: RecBole's *training* split -> each user's training history
(:func:`~recbole_lumos.data.partition.training_histories`) -> views. The full
``inter_feat`` (which holds validation and test items) is never read here, so
nothing about a user's validation or test item can reach a prompt, a candidate list,
a view or the cache key.

The language model is loaded only when something is missing from the cache: a later
run with the same settings reads the file in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_lumos.data.noise import client_histories
from recbole_lumos.errors import ConfigurationError, GenerationError, LumosError
from recbole_lumos.generation import prompt as prompting
from recbole_lumos.generation.cache import ViewsFile, cache_key
from recbole_lumos.generation.embedding import (
    SentenceEncoder,
    TextEncoder,
    embedding_identity,
    item_embeddings,
    lm_text_encoder,
    load_item_encoder,
    uses_language_model,
)
from recbole_lumos.generation.grounding import STAGES, Grounding, TitleIndex, ground_embeddings, ground_text
from recbole_lumos.generation.item_text import ItemTexts, dataset_item_texts
from recbole_lumos.generation.language_model import generation_batch_size, load_language_model, model_identity
from recbole_lumos.generation.semantic import ItemSpace, ViewPlan, plan_views
from recbole_lumos.generation.settings import GeneratorSettings, is_counterfactual

logger = logging.getLogger(__name__)

SEMANTIC_CHUNK = 512
"""Users per batch in semantic mode (memory: a few ``[users, items]`` matrices)."""


@dataclass
class ViewSet:
    """Every requested user's views, the file they live in and how they were made."""

    path: Path
    views: dict[str, dict[str, list[str]]]
    """User token -> ``{"F": [...], "R": [...], "C": [...]}`` (original item tokens), plus ``"C2"`` ...
    ``"C{n_c}"`` when ``lumos_num_counterfactuals`` is above 1."""
    stats: dict[str, Any]
    mode: str
    """``prompt`` or ``semantic``: the mode actually used."""


def resolve_mode(setting: str, device: str | None = None) -> tuple[str, str]:
    """``(mode, why)``. ``auto`` follows RecBole's device (``use_gpu``, ``gpu_id``): prompt views on a
    GPU (fast decoding), semantic views on a CPU (minutes instead of hours). ``why`` is for the log."""
    if setting != "auto":
        return setting, f"lumos_generation={setting}"
    where = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if where.type == "cuda":
        return "prompt", f"lumos_generation=auto and RecBole's device is {where}: prompt views (decoding on the GPU)"
    return "semantic", (
        f"lumos_generation=auto and RecBole's device is {where} (use_gpu=False or no CUDA): semantic views "
        "(prompt views take hours on a CPU; --lumos_generation=prompt forces them)"
    )


def random_item_space(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Random unit item vectors of ``shape`` (``LUMOS-randViews``): the same view layout, counts and
    draws as the text space, without its semantics."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    vectors = rng.standard_normal(shape).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


class _GeneratorSession:
    """Loads the language model (and item encoder) on first use only, and times it."""

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        self._lm: tuple[torch.nn.Module, Any] | None = None
        self._encoder: TextEncoder | SentenceEncoder | None = None
        self.load_seconds = 0.0

    def language_model(self) -> tuple[torch.nn.Module, Any]:
        if self._lm is None:
            start = time.perf_counter()
            self._lm = load_language_model(self.settings)
            self.load_seconds += time.perf_counter() - start
            logger.info("language model loaded in %.1f s", time.perf_counter() - start)
        return self._lm

    def text_encoder(self) -> TextEncoder | SentenceEncoder:
        if self._encoder is None:
            if uses_language_model(self.settings):
                self._encoder = lm_text_encoder(*self.language_model(), self.settings)
            else:
                start = time.perf_counter()
                self._encoder = load_item_encoder(self.settings)
                self.load_seconds += time.perf_counter() - start
        return self._encoder


def views_file_for(settings: GeneratorSettings, mode: str) -> ViewsFile:
    """The views file that runs with these settings read and write in ``mode`` (``prompt`` or ``semantic``)."""
    generator = model_identity(settings) if mode == "prompt" else {}
    key = cache_key(settings, mode, generator, embedding_identity(settings))
    return ViewsFile(settings.lumos_cache_dir, settings.dataset, mode, key)  # its views follow the key's n_c


def cached_views_file(settings: GeneratorSettings, what_to_do: str) -> tuple[str, ViewsFile]:
    """``(mode, file)`` of views that must already exist: the diagnostics read views, never generate them."""
    mode, _ = resolve_mode(settings.lumos_generation, settings.device)
    views_file = views_file_for(settings, mode)
    if not views_file.path.is_file():
        raise ConfigurationError(
            f"no {mode} views for these settings in {settings.lumos_cache_dir} "
            f"(expected {views_file.path.name}); {what_to_do}"
        )
    return mode, views_file


def ensure_views(config: Any, dataset: Any, train_dataset: Any, *, max_users: int | None = None) -> ViewSet:
    """Load the cache, generate what is missing (resumable), write the file, return every user's views.

    ``config`` is a RecBole ``Config`` built with ``build_config("LUMOS", ...)``;
    ``dataset`` RecBole's full sequential dataset (``create_dataset(config)``), used
    for id <-> token maps and the item file only; ``train_dataset`` the training split
    (``train_data._dataset``), the only source of histories. ``max_users`` (or
    ``lumos_max_users``) keeps the first N users by token, for smoke tests. Users
    without a training row (too short a history for the split) have no views.
    """
    start = time.perf_counter()
    settings = GeneratorSettings.from_config(config)
    mode, why = resolve_mode(settings.lumos_generation, settings.device)
    logger.info("views: %s mode (%s)", mode, why)

    histories = client_histories(train_dataset, config)  # what the device holds: its history, with noise_ratio
    user_ids = sorted(histories)
    user_tokens = [str(t) for t in dataset.id2token(dataset.uid_field, np.asarray(user_ids, dtype=np.int64))]
    by_token = dict(sorted(zip(user_tokens, user_ids, strict=True)))
    limit = max_users if max_users is not None else settings.lumos_max_users
    selected = list(by_token)[: int(limit)] if limit is not None else list(by_token)
    item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]

    views_file = views_file_for(settings, mode)
    with views_file.locked():  # one writer per file: concurrent runs of these settings wait, then read
        cached = views_file.load(users=set(user_tokens), items=set(item_tokens[1:]))
        todo = [user for user in selected if user not in cached]
        counters = _Counters(views_file.read_sidecar().get("counters") if cached else None)
        logger.info(
            "views: %d of %d users found in %s, %d to generate",
            len(selected) - len(todo),
            len(selected),
            views_file.path,
            len(todo),
        )
        timings = {"model_load_seconds": 0.0, "embedding_seconds": 0.0, "generation_seconds": 0.0}
        if todo:
            job = _Generation(settings, mode, views_file, cached, counters, timings)
            try:
                job.run(config, dataset, {u: histories[by_token[u]].numpy() for u in todo}, histories, item_tokens)
            finally:
                timings["model_load_seconds"] = job.session.load_seconds
                if views_file.path.is_file():
                    stats = _stats(mode, selected, cached, counters, timings, start, len(todo), views_file.view_names)
                    views_file.write_sidecar(stats, counters.as_dict())
        stats = _stats(mode, selected, cached, counters, timings, start, len(todo), views_file.view_names)
        if todo or not views_file.sidecar.is_file():  # a cached call keeps the statistics of the run that generated
            views_file.write_sidecar(stats, counters.as_dict())
    _log_stats(stats)
    return ViewSet(path=views_file.path, views={u: cached[u] for u in selected}, stats=stats, mode=mode)


class _Counters:
    """Grounding counters, kept in the sidecar so that a resumed run adds to them."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.stages = {stage: int(saved.get("stages", {}).get(stage, 0)) for stage in STAGES}
        self.prompts = int(saved.get("prompts", 0))
        self.retried = int(saved.get("retried", 0))
        self.fallback_views = int(saved.get("fallback_views", 0))
        self.generated_users = int(saved.get("generated_users", 0))
        self.generation_seconds = float(saved.get("generation_seconds", 0.0))

    def add(self, other: _Counters) -> None:
        for stage in STAGES:
            self.stages[stage] += other.stages[stage]
        self.prompts += other.prompts
        self.retried += other.retried
        self.fallback_views += other.fallback_views
        self.generated_users += other.generated_users
        self.generation_seconds += other.generation_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages": dict(self.stages),
            "prompts": self.prompts,
            "retried": self.retried,
            "fallback_views": self.fallback_views,
            "generated_users": self.generated_users,
            "generation_seconds": round(self.generation_seconds, 3),
        }


class _Generation:
    """One call's generation: item space, then chunk by chunk plan -> views -> append to the file.

    A chunk's counters join the file's only once its rows are on disk, so a failed
    chunk is neither counted nor written, and a rerun redoes exactly that chunk.
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        mode: str,
        views_file: ViewsFile,
        cached: dict[str, dict[str, list[str]]],
        counters: _Counters,
        timings: dict[str, float],
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.views_file = views_file
        self.cached = cached
        self.counters = counters
        self.timings = timings
        self.session = _GeneratorSession(settings)
        self.texts: ItemTexts | None = None
        self._prompt_run: _PromptRun | None = None

    def item_space(self, config: Any, dataset: Any, histories: dict[int, torch.Tensor], num_items: int) -> ItemSpace:
        """Catalogue embeddings and the pool of items views may use."""
        texts = dataset_item_texts(config, dataset)
        cache_dir = Path(self.settings.lumos_cache_dir)
        embeddings, timing = item_embeddings(self.settings, texts.texts, cache_dir, self.session.text_encoder)
        self.timings["embedding_seconds"] = timing["embedding_seconds"]
        if self.settings.lumos_view_space == "random":
            embeddings = random_item_space(embeddings.shape, self.settings.views_seed)
        pool = np.zeros(num_items, dtype=bool)
        if self.settings.lumos_item_pool == "train":
            for (
                history
            ) in histories.values():  # training split only: an item seen only in validation/test is no view item
                pool[history.numpy()] = True
        else:
            pool[1:] = True
        self.texts = texts
        return ItemSpace(embeddings, pool)

    def run(
        self,
        config: Any,
        dataset: Any,
        todo: dict[str, np.ndarray],
        histories: dict[int, torch.Tensor],
        item_tokens: list[str],
    ) -> None:
        """Views of the users of ``todo`` (token -> training history), appended chunk by chunk."""
        from tqdm.auto import tqdm

        settings = self.settings
        space = self.item_space(config, dataset, histories, len(item_tokens))
        tokens = np.asarray(item_tokens)
        prompted = self.mode == "prompt"
        chunk = generation_batch_size(settings) if prompted else SEMANTIC_CHUNK
        users_todo = list(todo)
        names = settings.view_names
        unit, total = ("prompt", len(names) * len(users_todo)) if prompted else ("user", len(users_todo))
        bar = tqdm(total=total, unit=unit, desc=f"{self.mode} views", disable=not settings.show_progress)
        try:
            for begin in range(0, len(users_todo), chunk):
                users = users_todo[begin : begin + chunk]
                started, loading = time.perf_counter(), self.session.load_seconds
                found = _Counters()
                plans = plan_views(
                    space,
                    users,
                    [todo[u] for u in users],
                    settings,
                    num_candidates=int(settings.lumos_num_candidates) if prompted else 0,
                )
                if prompted:
                    views = self.prompted(plans, space, found, bar)
                else:
                    views = [plan.semantic_views() for plan in plans]
                    bar.update(len(users))
                done = {
                    user: {name: tokens[view[name]].tolist() for name in names}
                    for user, view in zip(users, views, strict=True)
                }
                self.views_file.append(done)
                self.cached.update(done)
                found.generation_seconds = time.perf_counter() - started - (self.session.load_seconds - loading)
                found.generated_users = len(users)
                self.timings["generation_seconds"] += found.generation_seconds  # model load is reported apart
                self.counters.add(found)
                self.views_file.write_sidecar({"partial": True}, self.counters.as_dict())
        finally:
            bar.close()

    def prompted(self, plans: Sequence[ViewPlan], space: ItemSpace, found: _Counters, bar: Any) -> list[dict]:
        """Prompt-mode views of one chunk; any failure of the model becomes a :class:`GenerationError`."""
        if self._prompt_run is None:
            self._prompt_run = _PromptRun(self.settings, self.session, self.texts, space, found)
        self._prompt_run.counters = found
        try:
            return self._prompt_run.views(plans, bar)
        except LumosError:
            raise
        except Exception as error:
            users = [plan.user for plan in plans]
            raise GenerationError(
                f"Generating the prompt-mode views of users {users[0]}..{users[-1]} failed "
                f"({type(error).__name__}: {error}). The views of {len(self.cached)} users already written to "
                f"{self.views_file.path} are kept and a rerun resumes after them. Lower --lumos_gen_batch_size "
                "or --lumos_max_new_tokens, check --lumos_llm, or use --lumos_generation=semantic."
            ) from error


class _PromptRun:
    """Prompt mode for one chunk of users: prompts, answers, grounding, one retry, fallback, assembly."""

    def __init__(
        self,
        settings: GeneratorSettings,
        session: _GeneratorSession,
        texts: ItemTexts,
        space: ItemSpace,
        counters: _Counters,
    ) -> None:
        self.settings = settings
        self.session = session
        self.texts = texts
        self.space = space
        self.counters = counters
        self.index = TitleIndex(texts.titles)
        self.catalogue = {int(i) for i in torch.nonzero(space.pool).flatten()}
        self.item_vectors = space.embeddings.numpy()

    def _answers(self, prompts: Sequence[str], bar: Any) -> list[str]:
        model, tokenizer = self.session.language_model()
        answers = prompting.generate_answers(
            model,
            tokenizer,
            prompts,
            batch_size=generation_batch_size(self.settings),
            max_new_tokens=int(self.settings.lumos_max_new_tokens),
            on_batch=bar.update,
        )
        if (
            not isinstance(answers, list)
            or len(answers) != len(prompts)
            or not all(isinstance(a, str) for a in answers)
        ):
            got = f"{len(answers)} answers" if isinstance(answers, list) else type(answers).__name__
            raise GenerationError(
                f"The language model returned {got} for {len(prompts)} prompts, so its output cannot be matched to "
                "users and views. This is a fault of the generation step, not of the data: check --lumos_llm and "
                "--lumos_llm_adapter (a causal LM with a chat template), or use --lumos_generation=semantic. "
                "Views already written to the cache are kept; a rerun resumes."
            )
        return answers

    def _ground(self, answers: Sequence[str], requests: Sequence[tuple[ViewPlan, str]]) -> list[Grounding]:
        groundings = []
        for answer, (plan, view) in zip(answers, requests, strict=True):
            need, candidates = prompting.view_request(view, plan)
            groundings.append(
                ground_text(
                    answer,
                    candidates,
                    need,
                    self.index,
                    blocked=plan.seen,
                    catalogue=None if is_counterfactual(view) else self.catalogue,
                )
            )
        pieces = [piece for g in groundings for piece in g.pending]
        if pieces:
            vectors = self.session.text_encoder().encode(pieces)
            ground_embeddings(
                groundings, [prompting.view_request(v, p)[1] for p, v in requests], vectors, self.item_vectors
            )
        return groundings

    def _prompts(self, requests: Sequence[tuple[ViewPlan, str]], strict: bool) -> list[str]:
        _, tokenizer = self.session.language_model()
        history = int(self.settings.lumos_prompt_history)
        return [
            prompting.render(tokenizer, prompting.build_messages(view, plan, self.texts, history, strict=strict))
            for plan, view in requests
        ]

    def views(self, plans: Sequence[ViewPlan], bar: Any) -> list[dict[str, list[int]]]:
        names = self.settings.view_names
        requests = [(plan, view) for plan in plans for view in names]
        asked = [i for i, (plan, view) in enumerate(requests) if _askable(plan, view)]
        bar.update(len(requests) - len(asked))  # nothing to ask (no candidates or nothing to choose)
        groundings: dict[int, Grounding] = {}
        if asked:
            ask = [requests[i] for i in asked]
            answers = self._answers(self._prompts(ask, strict=False), bar)
            groundings = dict(zip(asked, self._ground(answers, ask), strict=True))
            self.counters.prompts += len(asked)
            empty = [i for i in asked if not groundings[i].items]
            if empty:  # malformed or empty: one retry with a stricter prompt
                self.counters.retried += len(empty)
                bar.total += len(empty)
                retry = [requests[i] for i in empty]
                answers = self._answers(self._prompts(retry, strict=True), bar)
                for i, grounding in zip(empty, self._ground(answers, retry), strict=True):
                    groundings[i] = grounding
                    if not grounding.items:
                        self.counters.fallback_views += 1
        out = []
        for u, plan in enumerate(plans):
            chosen = {}
            for v, view in enumerate(names):
                grounding = groundings.get(len(names) * u + v)
                items = grounding.items if grounding is not None else []
                for stage in grounding.stages if grounding is not None else []:
                    self.counters.stages[stage] += 1
                chosen[view] = self._fill(plan, view, items)
            extra = [chosen[name] for name in plan.counterfactuals[1:]]
            out.append(plan.assemble(chosen["F"], chosen["R"], chosen["C"], extra))
        return out

    def _fill(self, plan: ViewPlan, view: str, items: list[int]) -> list[int]:
        """Grounded items, completed from the semantic construction (counted as ``fallback``)."""
        fallback = plan.semantic_items(view)
        need = len(plan.f_items) if view == "F" else len(fallback)
        filled = list(items[:need])
        for position in range(len(filled), need):
            spare = [i for i in fallback if i not in filled and i not in items]
            if view == "F":
                pick = spare[0] if spare else None
            else:  # keep the position's own semantic item when it is still free
                own = fallback[position]
                pick = own if own not in filled else (spare[0] if spare else own)
            if pick is None:
                break
            filled.append(pick)
            self.counters.stages["fallback"] += 1
        return filled


def _askable(plan: ViewPlan, view: str) -> bool:
    need, candidates = prompting.view_request(view, plan)
    return need > 0 and len(candidates) > 0


def _stats(
    mode: str,
    selected: Sequence[str],
    views: dict[str, dict[str, list[str]]],
    counters: _Counters,
    timings: dict[str, float],
    start: float,
    generated: int,
    names: Sequence[str],
) -> dict[str, Any]:
    """The statistics of docs/design.md §2.2 over the selected users (grounding: over every generated user)."""
    present = [views[u] for u in selected if u in views]
    lengths = {name: [len(v[name]) for v in present] for name in names}
    positions = sum(sum(x) for x in lengths.values())
    duplicates = sum(len(v[name]) - len(set(v[name])) for v in present for name in names)
    grounded = sum(counters.stages.values())
    stats: dict[str, Any] = {
        "mode": mode,
        "users": len(selected),
        "generated_users": generated,
        "cached_users": len(selected) - generated,
        "grounding_rate": (
            {stage: round(counters.stages[stage] / grounded, 4) if grounded else 0.0 for stage in STAGES}
            if mode == "prompt"
            else None
        ),
        "grounding_counts": dict(counters.stages) if mode == "prompt" else None,
        "prompts": counters.prompts,
        "retried_prompts": counters.retried,
        "fallback_rate": round(counters.fallback_views / counters.prompts, 4) if counters.prompts else 0.0,
        "duplicate_rate": round(duplicates / positions, 4) if positions else 0.0,
        "mean_length": {name: round(float(np.mean(x)), 2) if x else 0.0 for name, x in lengths.items()},
        "seconds_per_user": round(timings["generation_seconds"] / generated, 4) if generated else 0.0,
        "total_seconds": round(time.perf_counter() - start, 2),
        "model_load_seconds": round(timings["model_load_seconds"], 2),
        "embedding_seconds": round(timings["embedding_seconds"], 2),
        "generation_seconds": round(timings["generation_seconds"], 2),
        "from_cache": generated == 0,
    }
    return stats


def _log_stats(stats: dict[str, Any]) -> None:
    logger.info("views: %s", ", ".join(f"{k}={v}" for k, v in stats.items()))


def stats_table(stats: dict[str, Any]) -> str:
    """The statistics as a two-column text table (for the command line)."""
    rows: list[tuple[str, str]] = []
    for key, value in stats.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", _format(v)) for k, v in value.items()]
        else:
            rows.append((key, _format(value) if value is not None else "n/a"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
