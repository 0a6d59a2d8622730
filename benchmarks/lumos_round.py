"""One LUMOS round (each client's own windows plus its tri-view term), two ways, same process.

(a) one client after the other on its own weights (:meth:`LocalTrainer.train_functional`),
    the path any model and any number of local steps take (until 2026-11-30 this row was a
    ``torch.func.vmap`` path, which the results files of 2026-11-27 measured);
(b) the default: the packed per-client gradient pass
    (:meth:`LocalTrainer.train_packed`), which adds each client's view term
    (:meth:`LUMOS.client_view_losses`) to the same pass.

Both use the engine's own sampler and cohorts (``client_batch``), the real views from
``ensure_views`` (generated first if not cached) and the config's ``local_loss``. The two
ways alternate (b, a, b) so that a busy machine hurts both alike. Prints a table and
``speedup: a/b``.

    python benchmarks/lumos_round.py --dataset=ml-100k --data_path=../shared/datasets \\
        --config_files=properties/experiment/cpu-small.yaml --lumos_generation=semantic
"""

from __future__ import annotations

import argparse
import time

import torch


def _setup(args: argparse.Namespace):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import ClientPartition, training_histories
    from recbole_lumos.data.view_blocks import view_blocks
    from recbole_lumos.generation import ensure_views

    overrides = {"data_path": args.data_path, "lumos_generation": args.lumos_generation}
    if args.lumos_cache_dir:
        overrides["lumos_cache_dir"] = args.lumos_cache_dir
    config = build_config("LUMOS", args.dataset, config_files=args.config_files, overrides=overrides)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    train_dataset = train_data._dataset
    model = config.model_class(config, train_dataset)
    histories = training_histories(train_dataset)
    views = ensure_views(config, dataset, train_dataset)
    n_c = int(config["lumos_num_counterfactuals"] or 1)
    blocks = view_blocks(histories, views.views, train_dataset, config["MAX_ITEM_LIST_LENGTH"], n_c)
    return config, model, ClientPartition(histories, config["MAX_ITEM_LIST_LENGTH"], views=blocks), views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--lumos_generation", default="semantic")
    parser.add_argument("--lumos_cache_dir", default=None)
    parser.add_argument("--clients", type=int, default=512, help="clients in the round (the default cohort)")
    args = parser.parse_args()

    from recbole_lumos.data.partition import RoundSampler, collate_cohort
    from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer

    torch.set_num_threads(1)
    config, model, partition, views = _setup(args)
    settings = LocalSettings.from_config(config)
    trainer = LocalTrainer(model, settings)
    clients = min(args.clients, len(partition))
    sampler = RoundSampler(
        clients,
        clients_per_round=clients,
        client_batch=int(config["client_batch"]),
        seed=0,
        lengths=[partition.clients[c].inputs.size(0) for c in range(clients)],
    )
    start = trainer.global_params()
    times: dict[str, list[float]] = {"functional": [], "packed": []}
    for way in ("packed", "functional", "packed"):
        generator = torch.Generator().manual_seed(0)
        begin = time.perf_counter()
        for members in sampler:
            cohort = collate_cohort([(c, partition.clients[c]) for c in members])
            negatives = [trainer.draw_negatives(cohort.targets, generator)]
            train = trainer.train_packed if way == "packed" else trainer.train_functional
            train(start, cohort, negatives)
        times[way].append(time.perf_counter() - begin)
    functional, packed = min(times["functional"]), min(times["packed"])
    print(
        f"dataset {args.dataset}, {clients} clients, client_batch {config['client_batch']}, "
        f"local_loss {settings.loss}, views {views.mode} ({views.path.name}), lambda_cl {model.lambda_cl}, "
        f"L {config['MAX_ITEM_LIST_LENGTH']}, d {model.hidden_size}, one thread"
    )
    print("| way | seconds per round | clients/s |")
    print("|---|---|---|")
    for name, seconds in (("(a) functional, one by one", functional), ("(b) packed (default)", packed)):
        print(f"| {name} | {seconds:.2f} | {clients / seconds:,.0f} |")
    print(f"speedup: {functional / packed:.2f}")


if __name__ == "__main__":
    main()
