"""Central all-position training steps, two ways, same process and same batches.

(a) reference: every padded position is scored against the catalogue and masked
    out of the loss afterwards (the formulation ``torch.func.vmap`` needs);
(b) the default: the padded positions are dropped before the item scores.

Both run forward, backward and the Adam step of the model's own all-position loss on
the same user batches (``user_batch_size`` random users, as in a central epoch). The
two ways alternate (b, a, b, a) so that a busy machine hurts both alike; the best of
each is reported. Prints a table and ``speedup: a/b``.

    python benchmarks/central_step.py --dataset=amazon-beauty --data_path=../shared/datasets \\
        --config_files=properties/experiment/cpu-small.yaml
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import ClientPartition, collate_cohort, training_histories
    from recbole_lumos.model import next_item
    from recbole_lumos.model.next_item import all_positions_loss

    torch.set_num_threads(1)
    config = build_config(
        args.model, args.dataset, config_files=args.config_files, overrides={"data_path": args.data_path}
    )
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = config.model_class(config, train_data._dataset)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    users = int(config["user_batch_size"])
    order = torch.randperm(len(partition), generator=torch.Generator().manual_seed(0))
    batches = [
        collate_cohort([(int(c), partition.clients[int(c)]) for c in order[i * users : (i + 1) * users]])
        for i in range(args.steps)
    ]
    padded = sum(b.targets.numel() for b in batches)
    kept = sum(int((b.targets > 0).sum()) for b in batches)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run(masked: bool) -> tuple[float, float]:
        model.load_state_dict(start)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        torch.manual_seed(0)
        total = 0.0
        with mock.patch.object(next_item, "_plain", lambda tensor: not masked):
            begin = time.perf_counter()
            for batch in batches:
                optimizer.zero_grad()
                loss = all_positions_loss(model, batch.inputs, batch.targets)
                loss.backward()
                optimizer.step()
                total += loss.item()
            return time.perf_counter() - begin, total / len(batches)

    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, float] = {}
    for masked in (False, True, False, True):
        seconds, losses[masked] = run(masked)
        times[masked].append(seconds)
    reference, default = min(times[True]), min(times[False])
    print(
        f"dataset {args.dataset}, model {args.model}, {args.steps} steps of {users} users, "
        f"{model.n_items - 1} items, {kept / padded:.1%} of padded positions have a target, one thread"
    )
    print("| way | s / step | mean loss |")
    print("|---|---|---|")
    print(f"| (a) masked padded positions (reference) | {reference / args.steps * 1e3:.1f} ms | {losses[True]:.6f} |")
    print(f"| (b) padded positions dropped (default) | {default / args.steps * 1e3:.1f} ms | {losses[False]:.6f} |")
    print(f"speedup: {reference / default:.2f}")


if __name__ == "__main__":
    main()
