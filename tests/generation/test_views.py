"""ensure_views end to end on tiny data: both modes, the cache, resuming, leakage and failures."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SHARED_DATA

from recbole_lumos.data.partition import training_histories
from recbole_lumos.errors import ConfigurationError, GenerationError, LanguageModelError
from recbole_lumos.generation import VIEW_NAMES, counterfactual_names, ensure_views, view_names
from recbole_lumos.generation import prompt as prompting
from recbole_lumos.generation import views as views_module
from recbole_lumos.generation.semantic import share


def histories_by_token(dataset, train_dataset) -> dict[str, list[str]]:
    out = {}
    for user, history in training_histories(train_dataset).items():
        token = str(dataset.id2token(dataset.uid_field, user))
        out[token] = [str(t) for t in dataset.id2token(dataset.iid_field, history.numpy())]
    return out


def chosen_items(view_set, dataset, train_dataset, L: int = 10, n_c: int = 1) -> int:
    """Items the prompts choose: k_f (3) for F, plus the replaced share (0.3) of R and of every counterfactual."""
    histories = histories_by_token(dataset, train_dataset)
    return sum(3 + (1 + n_c) * share(0.3, min(len(histories[u]), L)) for u in view_set.views)


def assert_layout(view_set, dataset, train_dataset, config) -> None:
    """F, R and every counterfactual follow docs/design.md §2.1, from the user's training history alone."""
    L, k_f, n_c = config["MAX_ITEM_LIST_LENGTH"], config["k_f"], config["lumos_num_counterfactuals"]
    catalogue = set(map(str, dataset.field2id_token[dataset.iid_field][1:]))
    histories = histories_by_token(dataset, train_dataset)
    for user, views in view_set.views.items():
        history = histories[user]
        assert list(views) == list(view_names(n_c))
        for items in views.values():
            assert set(items) <= catalogue
        assert views["F"][: min(len(history), L - k_f)] == history[-(L - k_f) :]
        appended = views["F"][min(len(history), L - k_f) :]
        assert len(appended) == k_f and not set(appended) & set(history)
        assert len(views["R"]) == min(len(history), L)
        recent, kept = history[-L:], len(history[-L:]) - share(config["rho_c"], len(history[-L:]))
        for name in counterfactual_names(n_c):  # the recent history, its last rho_c share replaced by unseen items
            assert len(views[name]) == len(recent) and views[name][:kept] == recent[:kept]
            assert not set(views[name][kept:]) & set(history)


def test_semantic_views_end_to_end(prepare, tiny_data, tiny_lm):
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic")
    view_set = ensure_views(config, dataset, train)
    assert view_set.mode == "semantic"
    assert view_set.path.is_file() and view_set.path.name.startswith("tiny-semantic-")
    assert len(view_set.views) == 40
    assert_layout(view_set, dataset, train, config)
    stats = view_set.stats
    assert stats["users"] == 40 and stats["generated_users"] == 40 and stats["mode"] == "semantic"
    assert set(stats["mean_length"]) == set(VIEW_NAMES)
    sidecar = json.loads(view_set.path.with_suffix(".json").read_text())
    assert sidecar["key"]["mode"] == "semantic" and sidecar["stats"]["users"] == 40


def test_a_fixed_views_seed_shares_one_views_file_across_training_seeds(prepare, tiny_data, tiny_lm):
    common = {"lumos_llm": str(tiny_lm), "lumos_generation": "semantic", "lumos_max_users": 10}
    per_seed = [ensure_views(*prepare("tiny", tiny_data, seed=seed, **common)) for seed in (1, 2)]
    assert per_seed[0].path != per_seed[1].path and per_seed[0].views != per_seed[1].views  # draws follow the seed
    fixed = [ensure_views(*prepare("tiny", tiny_data, seed=seed, lumos_views_seed=1, **common)) for seed in (1, 2)]
    assert fixed[0].path == fixed[1].path == per_seed[0].path  # lumos_views_seed=1 is what seed=1 drew
    assert fixed[0].views == fixed[1].views == per_seed[0].views
    assert fixed[1].stats["from_cache"]


def test_prompt_views_end_to_end_with_real_generation(prepare, tiny_data, tiny_lm):
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="prompt")
    view_set = ensure_views(config, dataset, train, max_users=6)
    assert view_set.mode == "prompt" and view_set.path.name.startswith("tiny-prompt-")
    assert sorted(view_set.views) == sorted(view_set.views)[:6] and len(view_set.views) == 6
    assert_layout(view_set, dataset, train, config)
    stats = view_set.stats
    assert stats["prompts"] == 18
    assert sum(stats["grounding_counts"].values()) == chosen_items(view_set, dataset, train)
    assert abs(sum(stats["grounding_rate"].values()) - 1) < 1e-3


def test_prompt_mode_writes_every_counterfactual_with_real_generation(prepare, tiny_data, tiny_lm, monkeypatch):
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="prompt", lumos_num_counterfactuals=3
    )
    prompts_seen = []
    original = prompting.generate_answers

    def spy(model, tokenizer, prompts, **kwargs):
        prompts_seen.extend(prompts)
        return original(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(prompting, "generate_answers", spy)
    view_set = ensure_views(config, dataset, train, max_users=4)
    assert view_set.path.name.startswith("tiny-prompt-") and len(view_set.views) == 4
    assert_layout(view_set, dataset, train, config)  # F, R, C, C2, C3 for every user
    stats = view_set.stats
    assert stats["prompts"] == 4 * 5 and set(stats["mean_length"]) == {"F", "R", "C", "C2", "C3"}
    assert sum(stats["grounding_counts"].values()) == chosen_items(view_set, dataset, train, n_c=3)
    first = [p for p in prompts_seen[:20] if "dislike" in p]
    assert len(first) == 4 * 3 and len(set(first)) == 12  # each counterfactual prompt has its own candidates
    lines = view_set.path.read_text().splitlines()
    assert [line.split("\t")[1] for line in lines[1:6]] == ["F", "R", "C", "C2", "C3"]


def test_more_counterfactuals_on_ml_100k_are_distinct_and_reproducible(prepare, tiny_lm, tmp_path):
    """n_c = 4 semantic views of the first users of ml-100k: four different counterfactuals each, the same
    in a fresh cache, laid out on the training history alone; F, R and C are those of n_c = 1."""
    config, dataset, train = prepare(
        "ml-100k",
        SHARED_DATA,
        lumos_llm=str(tiny_lm),
        lumos_generation="semantic",
        MAX_ITEM_LIST_LENGTH=50,
        lumos_max_users=25,
        lumos_cache_dir=str(tmp_path / "a"),
        lumos_num_counterfactuals=4,
    )
    four = ensure_views(config, dataset, train)
    assert len(four.views) == 25
    assert_layout(four, dataset, train, config)
    for views in four.views.values():
        assert len({tuple(views[name]) for name in ("C", "C2", "C3", "C4")}) == 4
    config["lumos_cache_dir"] = str(tmp_path / "b")
    again = ensure_views(config, dataset, train)
    assert again.views == four.views and not again.stats["from_cache"]
    config["lumos_num_counterfactuals"] = 1
    one = ensure_views(config, dataset, train)
    assert one.path.parent == again.path.parent and one.path.name != again.path.name  # n_c is in the key
    assert {u: {k: v[k] for k in VIEW_NAMES} for u, v in four.views.items()} == one.views


def test_fewer_than_one_counterfactual_is_a_configuration_error(prepare, tiny_data, tiny_lm):
    with pytest.raises(ConfigurationError, match="lumos_num_counterfactuals is 0"):  # the config check, up front
        prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic", lumos_num_counterfactuals=0)
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic")
    config["lumos_num_counterfactuals"] = 0  # a config built by hand still meets the generator's own check
    with pytest.raises(ConfigurationError, match="lumos_num_counterfactuals is 0"):
        ensure_views(config, dataset, train)


def test_indices_in_answers_choose_the_items(prepare, tiny_data, tiny_lm, monkeypatch):
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="prompt")
    prompts_seen = []

    def answer(model, tokenizer, prompts, **kwargs):
        prompts_seen.extend(prompts)
        return ["2, 1, 3" for _ in prompts]

    monkeypatch.setattr(prompting, "generate_answers", answer)
    view_set = ensure_views(config, dataset, train, max_users=4)
    assert view_set.stats["grounding_counts"]["index"] == chosen_items(view_set, dataset, train)
    assert view_set.stats["grounding_counts"]["fallback"] == 0
    first = prompts_seen[0]  # F prompt of the first user: candidate 2 is the first appended item
    line = next(x for x in first.splitlines() if x.startswith("2. "))
    user = sorted(view_set.views)[0]
    title = line[3:].split(" [")[0]
    token = next(t for t in dataset.field2id_token[dataset.iid_field][1:] if f"Item number {t[1:]}" == title)
    assert view_set.views[user]["F"][-3] == token


def test_second_call_is_served_from_the_file(prepare, tiny_data, tiny_lm, monkeypatch):
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic")
    first = ensure_views(config, dataset, train)

    def no_model(*args, **kwargs):
        raise AssertionError("the language model must not be loaded for cached views")

    monkeypatch.setattr(views_module, "load_language_model", no_model)
    second = ensure_views(config, dataset, train)
    assert second.views == first.views and second.path == first.path
    assert second.stats["from_cache"] and second.stats["generated_users"] == 0


def test_an_interrupted_run_resumes_with_the_missing_users_only(prepare, tiny_data, tiny_lm, monkeypatch):
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic")
    full = ensure_views(config, dataset, train)
    lines = full.path.read_text().splitlines(keepends=True)
    kept = lines[: 1 + 3 * 10 + 2]  # header, 10 complete users, 2 rows of the 11th
    half = lines[1 + 3 * 10 + 2][:7]  # and half a line
    full.path.write_text("".join(kept) + half)
    written = "".join(lines[: 1 + 3 * 10])
    generated = []
    original = views_module.plan_views

    def spy(space, users, *args, **kwargs):
        generated.extend(users)
        return original(space, users, *args, **kwargs)

    monkeypatch.setattr(views_module, "plan_views", spy)
    resumed = ensure_views(config, dataset, train)
    assert resumed.views == full.views
    assert len(generated) == 30 and not set(generated) & set(sorted(full.views)[:10])
    assert resumed.path.read_text().startswith(written)  # rows already written are kept as they were
    assert resumed.stats["generated_users"] == 30


@pytest.mark.parametrize("n_c", [1, 3])
def test_validation_and_test_items_never_reach_prompts_views_or_keys(marker_data, prepare, tiny_lm, monkeypatch, n_c):
    data = marker_data
    markers = re.compile(r"\b(?:val|test)\d+\b|Marker item|Secret test")
    # Pool "train": marker items cannot be picked by content similarity either, so any marker
    # in a prompt, a candidate list, a view or a key could only have come from a leak.
    config, dataset, train = prepare(
        "marked",
        data,
        lumos_llm=str(tiny_lm),
        lumos_generation="prompt",
        lumos_item_pool="train",
        lumos_num_counterfactuals=n_c,
    )
    prompts_seen, candidates_seen = [], []
    original = views_module.plan_views

    def spy(*args, **kwargs):
        plans = original(*args, **kwargs)
        for plan in plans:
            for items in plan.candidates.values():
                candidates_seen.extend(str(t) for t in dataset.id2token(dataset.iid_field, items))
        return plans

    def answer(model, tokenizer, prompts, **kwargs):
        prompts_seen.extend(prompts)
        return ["1, 2, 3, Marker item 1, Secret test 2" for _ in prompts]

    monkeypatch.setattr(views_module, "plan_views", spy)
    monkeypatch.setattr(prompting, "generate_answers", answer)
    view_set = ensure_views(config, dataset, train)
    semantic = ensure_views(_semantic(config), dataset, train)
    assert len(view_set.views) == 12 and len(prompts_seen) >= 12 * (2 + n_c) and candidates_seen
    for prompt in prompts_seen:
        assert not markers.search(prompt), prompt
    assert not [c for c in candidates_seen if markers.search(c)]
    for result in (view_set, semantic):
        for views in result.views.values():
            assert list(views) == list(view_names(n_c))  # every counterfactual is checked below
            for items in views.values():
                assert not [t for t in items if markers.search(t)]
        assert not markers.search(result.path.name)
        assert not markers.search(result.path.with_suffix(".json").read_text())
        assert not markers.search(result.path.read_text())


def _semantic(config):
    config["lumos_generation"] = "semantic"
    return config


@pytest.mark.parametrize("n_c", [1, 2])
def test_garbage_answers_are_retried_once_then_fall_back(prepare, tiny_data, tiny_lm, monkeypatch, n_c):
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="prompt", lumos_num_counterfactuals=n_c
    )
    calls = []

    def garbage(model, tokenizer, prompts, **kwargs):
        calls.append(list(prompts))
        return ["?!  ..." for _ in prompts]

    monkeypatch.setattr(prompting, "generate_answers", garbage)
    view_set = ensure_views(config, dataset, train, max_users=3)
    prompts = 3 * (2 + n_c)  # three users, F, R and n_c counterfactuals each
    assert len(calls) == 2 and len(calls[0]) == len(calls[1]) == prompts  # every prompt retried once
    assert all("Reply with exactly" in p for p in calls[1])
    stats = view_set.stats
    assert stats["retried_prompts"] == prompts and stats["fallback_rate"] == 1.0
    assert (
        stats["grounding_counts"]["fallback"] == chosen_items(view_set, dataset, train, n_c=n_c)
        and stats["grounding_rate"]["fallback"] == 1.0
    )
    assert_layout(view_set, dataset, train, config)
    semantic = ensure_views(_semantic(config), dataset, train, max_users=3)
    assert view_set.views == semantic.views  # the fallback is the semantic construction


def test_unusable_output_is_a_generation_error_and_keeps_the_partial_cache(prepare, tiny_data, tiny_lm, monkeypatch):
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="prompt", lumos_gen_batch_size=2
    )
    batches = []

    def broken(model, tokenizer, prompts, **kwargs):
        batches.append(len(prompts))
        return ["1, 2, 3" for _ in prompts] if len(batches) == 1 else ["1"]  # then one answer for six prompts

    monkeypatch.setattr(prompting, "generate_answers", broken)
    with pytest.raises(GenerationError, match="1 answers for 6 prompts") as error:
        ensure_views(config, dataset, train, max_users=6)
    assert "kept" in str(error.value)
    path = next((tiny_data.parent / "views").glob("tiny-prompt-*.views"))
    assert len(path.read_text().splitlines()) == 1 + 3 * 2  # the first chunk (two users) is on disk
    monkeypatch.setattr(prompting, "generate_answers", lambda m, t, prompts, **k: ["1, 2, 3" for _ in prompts])
    resumed = ensure_views(config, dataset, train, max_users=6)
    assert resumed.stats["cached_users"] == 2 and len(resumed.views) == 6
    assert resumed.stats["prompts"] == 6 * 3  # the failed chunk was neither written nor counted


def test_a_missing_model_is_a_language_model_error_and_the_cache_survives(tiny_data, prepare, make_tiny_lm, tmp_path):
    model_dir = make_tiny_lm(tmp_path / "moved-model")
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(model_dir), lumos_generation="semantic")
    partial = ensure_views(config, dataset, train, max_users=5)
    before = partial.path.read_bytes()
    model_dir.rename(tmp_path / "elsewhere")
    (tiny_data.parent / "views").joinpath(next(p.name for p in (tiny_data.parent / "views").glob("*.npy"))).unlink()
    with pytest.raises(LanguageModelError, match=re.escape(str(model_dir))) as error:
        ensure_views(config, dataset, train)
    assert "--lumos_llm=" in str(error.value)
    assert partial.path.read_bytes() == before


def test_auto_mode_is_semantic_without_a_gpu(prepare, tiny_data, tiny_lm, monkeypatch):
    monkeypatch.setattr(views_module.torch.cuda, "is_available", lambda: False)
    config, dataset, train = prepare("tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="auto")
    assert ensure_views(config, dataset, train, max_users=2).mode == "semantic"


def test_lumos_max_users_from_the_config(prepare, tiny_data, tiny_lm):
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic", lumos_max_users=3
    )
    view_set = ensure_views(config, dataset, train)
    assert list(view_set.views) == sorted(view_set.views) and len(view_set.views) == 3


@pytest.mark.slow
def test_embedded_smollm2_on_ml_100k(prepare, tmp_path):
    """The real default model end to end: semantic for a handful of users, prompt mode for two."""
    config, dataset, train = prepare(
        "ml-100k",
        SHARED_DATA,
        MAX_ITEM_LIST_LENGTH=50,
        lumos_num_candidates=20,
        lumos_prompt_history=10,
        lumos_max_new_tokens=24,
        lumos_gen_batch_size=6,
        lumos_cache_dir=str(tmp_path / "views"),
        lumos_generation="semantic",
        lumos_num_counterfactuals=1,  # whatever ml-100k's own LUMOS file says: three prompts a user
    )
    semantic = ensure_views(config, dataset, train, max_users=8)
    assert_layout(semantic, dataset, train, config)
    config["lumos_generation"] = "prompt"
    prompted = ensure_views(config, dataset, train, max_users=2)
    assert_layout(prompted, dataset, train, config)
    assert prompted.stats["prompts"] == 6
    assert prompted.stats["grounding_rate"]["fallback"] < 1.0  # the model chose at least some items itself


def test_a_sentence_encoder_replaces_the_language_model_in_semantic_mode(prepare, tiny_data, tiny_lm, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("semantic mode with an item encoder needs no language model")

    monkeypatch.setattr(views_module, "load_language_model", no_model)
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm="/not/needed", lumos_item_encoder=str(tiny_lm), lumos_generation="semantic"
    )
    view_set = ensure_views(config, dataset, train, max_users=5)
    assert_layout(view_set, dataset, train, config)
    assert json.loads(view_set.path.with_suffix(".json").read_text())["key"]["embedding"]["encoder"] == str(tiny_lm)


def test_auto_follows_recbole_device_and_says_why():
    from recbole_lumos.generation.views import resolve_mode

    mode, why = resolve_mode("auto", "cpu")
    assert mode == "semantic" and "use_gpu=False" in why
    mode, why = resolve_mode("auto", "cuda:1")  # RecBole's device on a GPU machine (use_gpu, gpu_id)
    assert mode == "prompt" and "cuda:1" in why
    assert resolve_mode("prompt", "cpu")[0] == "prompt"


def test_generator_settings_carry_recbole_device(tiny_data):
    from recbole_lumos.config import build_config
    from recbole_lumos.generation.language_model import generator_device
    from recbole_lumos.generation.settings import GeneratorSettings

    config = build_config("LUMOS", "tiny", overrides={"data_path": str(tiny_data), "use_gpu": False})
    settings = GeneratorSettings.from_config(config)
    assert settings.device == "cpu" and generator_device(settings).type == "cpu"
