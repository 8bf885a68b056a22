"""What an export file is, by its content: the kinds ``regla export`` (and ``regla sam export``) may replace.

An existing file at an output is replaced without ``--force`` only when it is an earlier export of the same format,
recognised by content (a text file named ``x.onnx`` is not one); the side files an export writes
(``<file>.failed``, ``<file>.agreement.json``) follow the same rule. No torch at import: ``regla export``'s checks
run before anything heavy is loaded.
"""

from __future__ import annotations

from pathlib import Path

#: The file name suffix of each export format.
SUFFIX = {"onnx": ".onnx", "coreml": ".mlpackage", "torchscript": ".pt", "executorch": ".pte"}


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive, not a ``torch.save``'d state dict that also ends in ``.pt``: the one detector,
    :func:`regla.checkpoints.is_torchscript` (imported here on use, so ``regla export --help`` needs no torch)."""
    from ..checkpoints import is_torchscript as detect

    return detect(path)


def is_onnx(path: Path) -> bool:
    """An ONNX model by content (a ``ModelProto`` with an IR version and a graph), not a file named ``.onnx``."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything that does not parse is not an ONNX model
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def is_pte(path: Path) -> bool:
    """An ExecuTorch program by content: a FlatBuffer whose file identifier (bytes 4..8) is ``ET..``."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:6] == b"ET" and head[6:8].isdigit()


#: Which existing file at the output an export may replace without --force: an earlier export of its format,
#: recognised by content (a text file named ``x.onnx`` is not one).
SAME_KIND = {
    "onnx": lambda p: p.is_file() and is_onnx(p),
    "torchscript": lambda p: p.is_file() and is_torchscript(p),
    "executorch": lambda p: p.is_file() and is_pte(p),
}
#: The format of an export file by its name's suffix (for the ``.failed`` file an export keeps).
FORMAT_OF_SUFFIX = {SUFFIX[f]: f for f in SAME_KIND}
#: The writer named in ``<file>.agreement.json``.
EXPORT_WRITER = "regla export"


def is_agreement(path: Path) -> bool:
    """An ``<export>.agreement.json`` that ``regla export`` wrote (one of before ``written_by``: its keys)."""
    import json

    from ..outputs import json_written_by

    if json_written_by(path, EXPORT_WRITER):
        return True
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "written_by" not in doc and {"file", "reference", "top1_agreement"} <= set(doc)
