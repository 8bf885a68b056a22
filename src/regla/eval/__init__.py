"""``regla eval``: top-1/top-5 and throughput of any weights file on an image folder.

Modules: ``settings`` (the evaluation transform and the class mapping, from the flags, the weights file and the
model, in that order), ``samples`` (a dataset view that skips unreadable images and counts only what it read, and
its loader), and ``cli`` (the subcommand). Nothing in the project imports this package except the CLI table; it
reads weights through :mod:`regla.checkpoints` and reuses the training package's data checks and evaluation loop.
"""
