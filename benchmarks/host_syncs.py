"""Host syncs in one federated round: how often the round reads a tensor's value into Python.

On a GPU each such read (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``float(t)``)
waits for every kernel queued before it, so a round that reads values inside its loops
is bound by the host. On a CPU the reads cost little, but they are the same calls, so
they are counted here by wrapping those ``torch.Tensor`` methods for one round of the
engine's own cohort path (``train_cohort_round`` on the default packed step, then the
aggregator). Where CUDA is present, ``--device=cuda`` also counts what
``torch.cuda.set_sync_debug_mode("warn")`` reports, which includes the implicit syncs
(``nonzero``, boolean-mask indexing, ``torch.unique``) that no wrapper sees.

    python benchmarks/host_syncs.py --model=LUMOS --dataset=ml-100k --data_path=../shared/datasets
    python benchmarks/host_syncs.py --model=FedSASRec --dataset=ml-1m --data_path=../shared/datasets

Prints a table: calls per round by kind, and per cohort.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import warnings

import torch

COUNTED = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counting(counts: collections.Counter):
    """Count calls of the ``COUNTED`` tensor methods while the block runs."""
    originals = {name: getattr(torch.Tensor, name) for name in COUNTED}

    def wrap(name, method):
        def counted(self, *args, **kwargs):
            counts[name] += 1
            return method(self, *args, **kwargs)

        return counted

    try:
        for name, method in originals.items():
            setattr(torch.Tensor, name, wrap(name, method))
        yield counts
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="LUMOS")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lumos_generation", default="semantic")
    args = parser.parse_args()

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import RoundSampler, collate_cohort
    from recbole_lumos.federated.aggregators import build_aggregator
    from recbole_lumos.federated.client_round import PrivacySettings, train_cohort_round
    from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
    from recbole_lumos.federated.population import build_population

    overrides = {"data_path": args.data_path, "lumos_generation": args.lumos_generation, "federated": True}
    if args.device != "cpu":
        overrides.update({"use_gpu": True, "device": args.device})
    config = build_config(args.model, args.dataset, config_files=args.config_files, overrides=overrides)
    init_seed(config["seed"], True)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset).to(args.device)
    partition = build_population(config, model, train_data._dataset).partition
    trainer = LocalTrainer(model, LocalSettings.from_config(config))
    clients = min(int(config["clients_per_round"]), len(partition))
    sampler = RoundSampler(
        len(partition),
        clients_per_round=clients,
        client_batch=int(config["client_batch"]),
        seed=0,
        lengths=[c.inputs.size(0) for c in partition.clients],
    )
    start = trainer.global_params()
    shapes = {name: p.shape for name, p in start.items()}
    aggregator = build_aggregator(str(config["aggregator"]), shapes, config)
    cohorts = [collate_cohort([(c, partition.clients[c]) for c in members]).to(args.device) for members in sampler]
    generator = torch.Generator(device=args.device).manual_seed(0)
    counts: collections.Counter = collections.Counter()
    debug = 0
    with counting(counts), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("warn")
        for cohort in cohorts:
            for update in train_cohort_round(trainer, start, cohort, generator, None, PrivacySettings()):
                aggregator.add(update)
        aggregator.result()
        if args.device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode(0)
            debug = sum("synchroniz" in str(w.message) for w in caught)
    total = sum(counts.values())
    print(
        f"{args.model} on {args.dataset}: one round of {clients} clients in {len(cohorts)} cohorts "
        f"(client_batch {config['client_batch']}, local_loss {config['local_loss']}), device {args.device}"
    )
    print("| call | per round | per cohort |")
    print("|---|---|---|")
    for name in COUNTED:
        print(f"| `{name}` | {counts[name]} | {counts[name] / len(cohorts):.1f} |")
    print(f"| all counted | {total} | {total / len(cohorts):.1f} |")
    if args.device.startswith("cuda"):
        print(f"| CUDA sync debug warnings | {debug} | {debug / len(cohorts):.1f} |")


if __name__ == "__main__":
    main()
