"""``regla knn`` (DINO's weighted k-NN, ReGLA Fig. 3/4): exact against a brute-force reference, chunking-invariant."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regla.eval.knn import Neighbours, class_ranks, knn_scores, knn_search, knn_votes
from train_helpers import free_port, knn_features, make_folder

torch.set_num_threads(1)


def brute_force(bank, bank_y, queries, query_y, k, T, classes):
    """One query at a time in float64: sort every bank row, vote, rank the classes (lower index wins ties); top-5
    among the first min(5, k) classes."""
    votes_all, top1, top5 = [], 0, 0
    for q, y in zip(queries.double(), query_y.tolist(), strict=True):
        sims = bank.double() @ q
        order = sorted(range(len(sims)), key=lambda i: -sims[i].item())[:k]
        votes = [0.0] * classes
        for i in order:
            votes[bank_y[i].item()] += float(torch.exp(sims[i] / T))
        ranking = sorted(range(classes), key=lambda c: (-votes[c], c))
        top1 += ranking[0] == y
        top5 += y in ranking[:min(5, k)]
        votes_all.append(votes)
    n = len(query_y)
    return torch.tensor(votes_all, dtype=torch.float64), 100.0 * top1 / n, 100.0 * top5 / n


@pytest.mark.parametrize("k", [1, 5, 20])
def test_matches_brute_force_vote_for_vote(k):
    bank, bank_y, queries, query_y, classes = knn_features()
    ref_votes, ref_top1, ref_top5 = brute_force(bank, bank_y, queries, query_y, k, 0.07, classes)
    nb = knn_search(queries, bank, bank_y, k)
    votes = knn_votes(nb, k, classes, 0.07)
    torch.testing.assert_close(votes.double(), ref_votes, rtol=1e-4, atol=1e-6)
    assert ((votes > 0) == (ref_votes > 0)).all()  # the same classes got votes: the same neighbours voted
    s = knn_scores(bank, bank_y, queries, query_y, [k], 0.07, classes)
    assert s[f"top1_k{k}"] == pytest.approx(ref_top1) and s[f"top5_k{k}"] == pytest.approx(ref_top5)
    assert s["n"] == len(query_y) and s["bank"] == len(bank_y)


def dino_knn_classifier(train_features, train_labels, test_features, test_labels, k, T, num_classes):
    """DINO's ``eval_knn.py`` ``knn_classifier`` (facebookresearch/dino), one chunk: one-hot neighbours weighted by
    ``exp(sim / T)``, classes sorted by probability, top-5 over the first ``min(5, k)``. The sort is made stable
    (equal votes: lower class index first) so that the reference is deterministic."""
    similarity = torch.mm(test_features, train_features.t())
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    retrieved = torch.gather(train_labels.view(1, -1).expand(test_labels.shape[0], -1), 1, indices)
    one_hot = torch.zeros(test_labels.shape[0] * k, num_classes).scatter_(1, retrieved.view(-1, 1), 1)
    probs = (one_hot.view(test_labels.shape[0], -1, num_classes) * distances.div(T).exp().view(-1, k, 1)).sum(1)
    _, predictions = probs.sort(dim=1, descending=True, stable=True)
    correct = predictions.eq(test_labels.view(-1, 1))
    n = test_labels.shape[0]
    return (100.0 * correct.narrow(1, 0, 1).sum().item() / n,
            100.0 * correct.narrow(1, 0, min(5, k)).sum().item() / n)


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_top1_and_top5_equal_dino_eval_knn(k):
    bank, bank_y, queries, query_y, classes = knn_features()
    top1, top5 = dino_knn_classifier(bank, bank_y, queries, query_y, k, 0.07, classes)
    s = knn_scores(bank, bank_y, queries, query_y, [k], 0.07, classes)
    assert s[f"top1_k{k}"] == pytest.approx(top1) and s[f"top5_k{k}"] == pytest.approx(top5)


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_top1_equals_scikit_learn(k):
    """scikit-learn's brute-force cosine k-NN with DINO's weights exp(sim / T) = exp((1 - distance) / T)."""
    neighbors = pytest.importorskip("sklearn.neighbors")
    bank, bank_y, queries, query_y, classes = knn_features()
    knn = neighbors.KNeighborsClassifier(k, weights=lambda d: np.exp((1 - d) / 0.07), algorithm="brute",
                                         metric="cosine").fit(bank.numpy(), bank_y.numpy())
    top1 = 100.0 * (knn.predict(queries.numpy()) == query_y.numpy()).mean()
    assert knn_scores(bank, bank_y, queries, query_y, [k], 0.07, classes)[f"top1_k{k}"] == pytest.approx(top1)


def test_top5_with_fewer_than_five_neighbours_counts_only_the_first_k_classes():
    """One neighbour of class 3 for a query of class 0: class 0 has no vote; ranked 1 by index among the zero
    votes, it is in the first five classes, but top-5 at k = 1 is top-1 (DINO)."""
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    s = knn_scores(bank, torch.tensor([3, 1]), bank[:1], torch.tensor([0]), [1, 2], 0.07, num_classes=6)
    assert s["top1_k1"] == 0.0 and s["top5_k1"] == 0.0
    assert s["top5_k2"] == 0.0  # classes 3 and 1 voted; class 0 is third
    s = knn_scores(bank, torch.tensor([3, 1]), bank[:1], torch.tensor([1]), [1, 2], 0.07, num_classes=6)
    assert s["top5_k1"] == 0.0 and s["top5_k2"] == 100.0


def test_chunked_equals_unchunked_and_several_k_at_once():
    bank, bank_y, queries, query_y, classes = knn_features(n_bank=500, n_query=90)
    whole = knn_search(queries, bank, bank_y, 20, query_chunk=10_000, bank_chunk=10_000)
    chunked = knn_search(queries, bank, bank_y, 20, query_chunk=7, bank_chunk=13)
    assert torch.equal(whole.labels, chunked.labels)
    torch.testing.assert_close(whole.sims, chunked.sims, rtol=0, atol=1e-6)
    several = knn_scores(bank, bank_y, queries, query_y, [20, 1, 5], 0.07, classes, query_chunk=11, bank_chunk=17)
    for k in (1, 5, 20):
        alone = knn_scores(bank, bank_y, queries, query_y, [k], 0.07, classes)
        assert several[f"top1_k{k}"] == alone[f"top1_k{k}"] and several[f"top5_k{k}"] == alone[f"top5_k{k}"]


def test_bank_smaller_than_k_and_tie_rule():
    bank = F.normalize(torch.eye(3), dim=1)
    nb = knn_search(bank[:1], bank, torch.tensor([0, 1, 2]), k=20)
    assert nb.sims.shape == (1, 3)
    votes = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    # class 2 ties class 1 and loses on index; class 3 has three classes ahead of it
    assert class_ranks(votes, torch.tensor([2])).item() == 1
    assert class_ranks(votes, torch.tensor([1])).item() == 0
    assert class_ranks(votes, torch.tensor([3])).item() == 3
    assert knn_votes(Neighbours(torch.zeros(1, 2), torch.tensor([[1, 1]])), 2, 3, 0.5).tolist() == [[0, 2, 0]]


def test_regla_knn_cli_on_two_folders(tmp_path, capsys):
    from regla.cli import main


    root = make_folder(tmp_path / "data", classes=3, train_per_class=6, val_per_class=3)
    out = tmp_path / "knn.json"
    code = main(["knn", "--bank", str(root / "train"), "--queries", str(root / "val"), "--model", "regla_t",
                 "--k", "1", "5", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    m = json.loads(out.read_text())
    assert m["n"] == 9 and m["bank"] == 18 and m["k"] == [1, 5] and 0 <= m["top1_k1"] <= 100
    assert m["top5_k5"] == 100.0  # 3 classes: the true class is always among the top 5


def test_regla_knn_cli_rejects_unknown_query_classes(tmp_path, capsys):
    from regla.cli import main


    bank = make_folder(tmp_path / "a", classes=2, train_per_class=2, val_per_class=1)
    queries = make_folder(tmp_path / "b", classes=3, train_per_class=2, val_per_class=1)
    code = main(["knn", "--bank", str(bank / "train"), "--queries", str(queries / "val"), "--model", "regla_t"])
    assert code == 2 and "class_2" in capsys.readouterr().err


def test_two_ranks_give_the_one_process_answer(tmp_path):
    """torchrun, 2 gloo ranks, each with half the bank and half the queries (k=30 > a rank's bank of 20)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from regla.distill.losses import batch_moments

    here = Path(__file__).resolve().parent
    port = free_port()
    out = tmp_path / "knn.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(here),
                                                                            os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={port}", str(here / "knn_ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    bank, bank_y, queries, query_y, classes = knn_features(n_bank=41, n_query=23)
    assert got["scores"] == knn_scores(bank, bank_y, queries, query_y, [1, 5, 20, 30], 0.07, classes)
    feats = torch.arange(60, dtype=torch.float32).view(20, 3) ** 1.5
    mean, std = batch_moments(feats)
    torch.testing.assert_close(got["mean"], feats.mean(0)) and torch.testing.assert_close(mean, feats.mean(0))
    torch.testing.assert_close(got["std"], feats.std(0))
    torch.testing.assert_close(std, feats.std(0))
