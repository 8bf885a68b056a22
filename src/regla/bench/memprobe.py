"""Peak inference memory of an ONNX model, measured in a fresh process (run as a script, not imported).

Usage: ``python memprobe.py MODEL.onnx THREADS RES [RES ...]``; prints one JSON object.

Method: the process imports only onnxruntime and numpy and holds one CPU session with the memory arena off, with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``, set by the caller) so that freed activation
buffers go back to the OS. For each resolution (ascending) it allocates the batch-1 input, reads ``VmRSS``, resets
the peak-RSS counter (``/proc/self/clear_refs``), runs one inference and reads ``VmHWM``. ``peak_delta_mb`` =
VmHWM - VmRSS before the run (activation and workspace memory, weights excluded); ``peak_rss_mb`` = VmHWM (the whole
process: Python, ONNX Runtime, weights and activations). Linux only.
"""

from __future__ import annotations

import json
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe(path: str, threads: int, resolutions: list[int]) -> dict:
    """Peak memory of one batch-1 run of ``path`` at each resolution (see the module docstring)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = {}
    for res in sorted(resolutions):
        x = np.zeros((1, 3, res, res), dtype=np.float32)
        base = _status_kb("VmRSS")
        reset = _reset_peak()
        sess.run(None, {name: x})
        hwm = _status_kb("VmHWM")
        out[str(res)] = {"peak_delta_mb": round(max(0, hwm - base) / 1024, 1), "peak_rss_mb": round(hwm / 1024, 1),
                         "peak_reset": reset}
        del x
    return out


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]), [int(r) for r in sys.argv[3:]])))
