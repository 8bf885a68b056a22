"""Evaluation of a weights file: ``regla eval`` (top-1/top-5 and throughput on an image folder) and ``regla knn``.

Modules: ``settings`` (the evaluation transform and the class mapping, from the flags, the weights file and the
model, in that order), ``samples`` (a dataset view that skips unreadable images and counts only what it read, and
its loader), ``loop`` (top-1/top-5 and loss over a loader, also ``regla train``'s validation), ``knn`` (weighted
k-NN of frozen features, also ``regla distill``'s evaluation) and the subcommands ``cli`` (``regla eval``) and
``cli_knn`` (``regla knn``). It reads weights through :mod:`regla.checkpoints` and image folders through
:mod:`regla.data.folders`.
"""
