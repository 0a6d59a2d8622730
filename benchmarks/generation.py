"""The two view-generation modes, timed on the real path (``ensure_views``) in one process.

Builds LUMOS's config, the dataset and the split as ``recbole_lumos/generate.py`` does,
with a fresh temporary ``lumos_cache_dir``, then calls ``ensure_views`` twice:

1. ``lumos_generation=prompt`` for the first ``--prompt_users`` users: loads the language
   model, embeds every catalogue item text, then prompts (three prompts per user);
2. ``lumos_generation=semantic`` for ``--semantic_users`` users: reuses the item
   embeddings that call 1 wrote to the temporary folder (so the model is loaded and the
   catalogue embedded once), and no views file exists yet for this mode.

The figures are ``ViewSet.stats``' ``model_load_seconds``, ``embedding_seconds`` and
``generation_seconds`` (the views alone, model load excluded). Peak RSS is per step:
the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``
when a step starts and read when it ends; the boundaries inside call 1 are the
generator's own log records ("language model loaded", "embedded N item texts"). A
step's peak includes what the process already holds (Python, RecBole's dataset; during
the prompt call, the model): the header line gives the RSS before each call, measured
after ``gc.collect()`` and ``malloc_trim(0)``. Where the reset is not allowed the
column shows the process peak so far.

Prints a Markdown table (model load, item embeddings, semantic views, prompt views:
units, total s, ms per unit, peak RSS), a line with the prompt-mode prompts, seconds
per user and per prompt and grounding rates per stage, and last
``prompt/semantic per-user time ratio: X``.

There is no ``--device`` flag: ``load_language_model`` has no device setting and puts
the model on the GPU whenever ``torch.cuda.is_available()``, on the CPU otherwise.
Hide the GPU (``CUDA_VISIBLE_DEVICES=``) for a CPU figure on a GPU machine; the header
line says which device was used.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/generation.py --dataset=ml-100k \\
        --data_path=../shared/datasets [--prompt_users=8] [--semantic_users=all]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import resource
import tempfile
from typing import Any

import torch

import recbole_lumos.compat  # noqa: F401  (RecBole workarounds before RecBole is used)


class _PeakRss:
    """Per-step peak RSS in MB: reset the kernel's high-water mark at a step's start, read it at its end."""

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
            return True
        except OSError:
            return False

    @staticmethod
    def _read_mb(field: str = "VmHWM") -> float:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith(f"{field}:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def current(self) -> float:
        """Resident set size now, after handing freed heap memory back to the system where glibc allows."""
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # not glibc: no trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        return self._read_mb("VmRSS")

    def start(self) -> None:
        if self.resettable:
            self._reset()

    def end(self) -> float:
        peak = self._read_mb()
        self.start()
        return peak


class _StepMarks(logging.Handler):
    """Closes the model-load and embedding steps on the generator's own log records."""

    MARKS = {"language model loaded": "model load", "embedded %d item texts": "item embeddings"}

    def __init__(self, rss: _PeakRss) -> None:
        super().__init__(logging.INFO)
        self.rss = rss
        self.peaks: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for prefix, step in self.MARKS.items():
            if str(record.msg).startswith(prefix) and step not in self.peaks:
                self.peaks[step] = self.rss.end()


def _setup(dataset_name: str, data_path: str, cache_dir: str) -> tuple[Any, Any, Any]:
    """Config, full dataset and training split, as ``recbole_lumos.generate.run`` builds them."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.atomic_files import ensure_dataset

    overrides = {
        "data_path": data_path,
        "lumos_cache_dir": cache_dir,
        "lumos_generation": "prompt",
        "show_progress": False,
    }
    config = build_config("LUMOS", dataset_name, overrides=overrides)
    ensure_dataset(config)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    return config, dataset, train_data._dataset


def _users(value: str) -> int | None:
    if value == "all":
        return None
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of users >= 1 or 'all'")
    return number


def _row(step: str, units: int, unit: str, seconds: float, peak_mb: float | None) -> str:
    per_unit = f"{1000 * seconds / units:,.1f}" if units else "n/a"
    peak = f"{peak_mb:,.0f}" if peak_mb is not None else "n/a"
    return f"| {step} | {units:,} {unit} | {seconds:.2f} | {per_unit} | {peak} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--prompt_users", type=_users, default=8, help="users in prompt mode (default 8)")
    parser.add_argument("--semantic_users", type=_users, default=None, help="users in semantic mode (default all)")
    args = parser.parse_args()
    if args.prompt_users is None:
        parser.error("--prompt_users needs a number (prompt mode takes seconds per user on a CPU)")

    from recbole_lumos.generation.views import ensure_views

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rss = _PeakRss()
    marks = _StepMarks(rss)
    logging.getLogger("recbole_lumos.generation").addHandler(marks)
    logging.getLogger("recbole_lumos.generation").setLevel(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="lumos-views-bench-") as cache_dir:
        config, dataset, train_dataset = _setup(args.dataset, args.data_path, cache_dir)
        num_items = dataset.item_num - 1  # internal id 0 is padding

        baseline = {"prompt call": rss.current()}
        rss.start()
        prompted = ensure_views(config, dataset, train_dataset, max_users=args.prompt_users)
        prompt_peak = rss.end()

        config["lumos_generation"] = "semantic"
        baseline["semantic call"] = rss.current()
        rss.start()
        semantic = ensure_views(config, dataset, train_dataset, max_users=args.semantic_users)
        semantic_peak = rss.end()

    p, s = prompted.stats, semantic.stats
    if prompted.mode != "prompt" or semantic.mode != "semantic" or p["from_cache"] or s["from_cache"]:
        raise SystemExit(f"unexpected modes or cache hits: prompt stats {p}, semantic stats {s}")
    if s["model_load_seconds"] or s["embedding_seconds"]:
        print(
            f"note: the semantic call loaded the model or embedded the items again "
            f"({s['model_load_seconds']} s, {s['embedding_seconds']} s): the table shows the prompt call's figures"
        )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"dataset {args.dataset}, device {device}, torch threads {torch.get_num_threads()}, "
        "order: prompt call (model load, item embeddings, prompt views), then semantic call; "
        f"peak RSS {'per step' if rss.resettable else 'of the process so far'}, "
        f"RSS before each call: {', '.join(f'{call} {mb:,.0f} MB' for call, mb in baseline.items())}"
    )
    print("| step | units | total s | ms per unit | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    print(_row("model load", 1, "model", p["model_load_seconds"], marks.peaks.get("model load")))
    print(_row("item embeddings", num_items, "items", p["embedding_seconds"], marks.peaks.get("item embeddings")))
    print(_row("semantic views", s["generated_users"], "users", s["generation_seconds"], semantic_peak))
    print(_row("prompt views", p["generated_users"], "users", p["generation_seconds"], prompt_peak))

    calls = p["prompts"] + p["retried_prompts"]
    rates = ", ".join(f"{stage} {100 * rate:.1f}%" for stage, rate in p["grounding_rate"].items())
    per_prompt = f"{p['generation_seconds'] / calls:.2f} s per prompt" if calls else "no prompts"
    print(
        f"prompt mode: {p['prompts']} prompts + {p['retried_prompts']} retried, "
        f"{p['generation_seconds'] / p['generated_users']:.2f} s per user, {per_prompt} (retries included), "
        f"fallback rate {100 * p['fallback_rate']:.1f}% of prompts; grounding rate per stage "
        f"(share of {sum(p['grounding_counts'].values())} chosen items): {rates}"
    )
    semantic_per_user = s["generation_seconds"] / s["generated_users"]
    prompt_per_user = p["generation_seconds"] / p["generated_users"]
    ratio = f"{prompt_per_user / semantic_per_user:,.0f}" if semantic_per_user else "n/a (semantic time rounds to 0)"
    print(f"prompt/semantic per-user time ratio: {ratio}")


if __name__ == "__main__":
    main()
