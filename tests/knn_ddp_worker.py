"""torchrun worker of tests/test_knn.py: KNN and the teacher statistics on each rank's shard, with gloo."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from regla.distill.losses import batch_moments
from regla.eval.knn import knn_scores


def main(out: str) -> None:
    from train_helpers import knn_features

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    # uneven shards, 20 or 21 bank rows each
    bank, bank_y, queries, query_y, classes = knn_features(n_bank=41, n_query=23)
    scores = knn_scores(bank[rank::world], bank_y[rank::world], queries[rank::world], query_y[rank::world],
                        [1, 5, 20, 30], 0.07, classes, query_chunk=4, bank_chunk=6)
    feats = torch.arange(60, dtype=torch.float32).view(20, 3) ** 1.5
    mean, std = batch_moments(feats[rank::world])
    if rank == 0:
        torch.save({"scores": scores, "mean": mean, "std": std}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
