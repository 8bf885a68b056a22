"""``regla bench``: params, MACs, CPU latency and memory of ours vs the peers, in every runtime a user deploys to.

Backends (``--backends``, :mod:`regla.bench.backends`): ONNX Runtime fp32 and int8, PyTorch eager and
``torch.compile``, ExecuTorch XNNPACK fp32 and int8, all timed in one interleaved run.

``--output`` is a folder (default ``bench_out/``): the results are written into it (``results.json``, ``.csv``,
``.md``, PNGs), each atomically, replacing only earlier results of the same name; other files in it are left alone.
A file given as ``--output`` is refused before anything runs. Errors propagate to :func:`regla.cli.main`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from ..preflight import float_range, int_range

DEFAULT_RESOLUTIONS = (224, 512)
DEFAULT_REFERENCE = "regla_m"
#: regla.bench.backends.BACKENDS, repeated here so that `regla bench --help` imports no torch (a test keeps them equal)
BACKEND_CHOICES = ("ort", "ort-int8", "eager", "compile", "executorch", "executorch-int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla bench`` options on ``parser``."""
    parser.add_argument("--models", "-m", nargs="+", default=None, metavar="NAME",
                        help="models to compare: names, comma lists or globs ('regla_*'); default: ReGLA T-X and the "
                             "Table 2 peers that are registered")
    parser.add_argument("--resolutions", "-r", type=int_range(32, 1024), nargs="+", metavar="PX",
                        default=list(DEFAULT_RESOLUTIONS),
                        help="square input sides, 32..1024 (default 224 512; add 1024 for the 512->1024 growth)")
    parser.add_argument("--threads", type=int_range(0), default=0,
                        help="intra-op threads for ONNX Runtime and PyTorch (default: physical cores)")
    parser.add_argument("--warmup", type=int_range(1), default=3, help="warm-up runs per model, backend, resolution")
    parser.add_argument("--min-runs", type=int_range(1),
                        default=10, help="fewest timed runs per measurement (default 10)")
    parser.add_argument("--max-runs", type=int_range(1),
                        default=100, help="most timed runs per measurement (default 100)")
    parser.add_argument("--target-time", type=float_range(0.0, lo_open=True), default=1.0,
                        help="seconds of timed runs to aim for per measurement, within the run limits (default 1)")
    parser.add_argument("--rounds", type=int_range(1),
                        default=5, help="interleaved rounds the timed runs are split into")
    parser.add_argument("--backends", nargs="+", choices=BACKEND_CHOICES, default=["ort", "eager"],
                        help="what to time (default: ort eager): ort / ort-int8 (ONNX Runtime fp32 / static int8 "
                             "QDQ), eager / compile (PyTorch eager / torch.compile inductor, compile time reported "
                             "apart), executorch / executorch-int8 (ExecuTorch XNNPACK fp32 / int8)")
    parser.add_argument("--calib", default=None, metavar="DIR",
                        help="images to calibrate the int8 backends on (searched recursively; default: the digits "
                             "demo set of `regla train --demo`)")
    parser.add_argument("--calib-images", type=int_range(1, 10000), default=16, metavar="N",
                        help="calibration images per model (default 16)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model peak memory probe")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--reference", default=None,
                        help=f"one of the benchmarked models, whose latency ratios to the others are reported "
                             f"(default {DEFAULT_REFERENCE}, when it is benchmarked)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: ONNX Runtime per-node profile of each model (time by operator type, "
                             "by stage/sub-module and by block), printed and written as profile_<model>_<px>.json; "
                             "with eager among --backends also torch.profiler of PyTorch eager "
                             "(profile_eager_<model>_<px>.json)")
    parser.add_argument("--task", choices=("classify", "sam", "det", "seg"), default="classify",
                        help="classify: backbones (default); sam: SAM image encoders at 1024 px (--resolutions to "
                             "change it) and the mask decoder, ONNX Runtime only, 1 thread unless --threads; "
                             "det: the whole Mask R-CNN (eager, 100 detections forced); seg: the whole Semantic FPN "
                             "(eager and ONNX Runtime); det and seg at --sizes with --dense-backbones")
    parser.add_argument("--dense-backbones", nargs="+", default=None, metavar="NAME",
                        help="--task det|seg: backbones of the detector / segmenter (default: regla_m iformer_m "
                             "repvit_m1_1 repnext_m3)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="WxH",
                        help="--task det|seg: input sizes, width x height in px (default: 512x512 1333x800)")
    parser.add_argument("--sam-encoders", nargs="+", default=None, metavar="NAME[:MODE]",
                        help="--task sam: encoders to time, e.g. regla_m_sam:fuse repvit_sam mobile_sam sam_vit_b "
                             "(default: ReGLA-T/M-SAM in both modes, RepViT-SAM, MobileSAM, SAM ViT-B)")
    parser.add_argument("--sam-eager", action="store_true",
                        help="--task sam: also time the fused encoders in eager PyTorch (same interleaved rounds)")
    parser.add_argument("--tables", nargs="+", default=None, metavar="RUN_DIR",
                        help="time nothing: lay out earlier runs' results.json (their --output folders) as one "
                             "Markdown table per backend over all their resolutions, with the 512->1024 growth, "
                             "int8 speed-ups and compile/ORT ratios; writes tables.md and latency_vs_resolution.png")
    parser.add_argument("--output", "-o", default="bench_out",
                        help="output folder (default bench_out/); results replace earlier results of the same name "
                             "in it, other files are left alone")


def _warn_if_busy(threads: int) -> None:
    """Warn when other processes already keep the CPUs busy: multi-threaded timings then degrade badly."""
    import os

    from .measure import physical_cores

    if not hasattr(os, "getloadavg"):
        return
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    used = threads or physical_cores()
    if load + used > cpus + 0.5:
        print(f"regla bench: warning: load average {load:.1f} on {cpus} CPUs before starting; with {used} thread(s) "
              "the timings will be noisy (and multi-threaded ones can slow down several-fold); "
              "prefer an idle machine or fewer --threads", file=sys.stderr)


def _command_line() -> str:
    argv = sys.argv[1:]
    tail = argv[argv.index("bench") + 1:] if "bench" in argv else argv
    return "regla bench" + "".join(" " + shlex.quote(a) for a in tail)


#: What the side-by-side run writes into ``--output`` (report.write_outputs)
RESULT_FILES = ("results.json", "results.csv", "results.md", "latency_vs_resolution.png", "accuracy_vs_latency.png",
                "latency_by_backend.png")


def task_files(task: str) -> tuple[str, ...]:
    """The files ``regla bench --task <task>`` writes into ``--output``; the first is its JSON document."""
    if task == "classify":
        return RESULT_FILES
    if task in ("det", "seg"):
        from .dense import result_files

        return result_files(task)
    if task == "sam":
        from .sam import RESULT_FILES as SAM_FILES

        return SAM_FILES
    raise ValueError(f"unknown bench task {task!r}")


def output_folder(path: str, task: str = "classify") -> Path:
    """The ``--output`` folder, checked before any work: not a file, writable, with free space, and every file of
    :func:`task_files` already in it an earlier ``regla bench --task <task>`` run's (a folder whose JSON document,
    the first of those files, is one). Other files in the folder are neither refused nor touched."""
    from ..outputs import check_new_output, check_output_folder

    files = task_files(task)
    out = check_output_folder(path, files)
    earlier = out / files[0]
    ours = earlier.is_file() and _is_bench_document(earlier, task)
    what = f"a result of an earlier regla bench run (its {files[0]} is not one)"
    for name in files:
        check_new_output(out / name, lambda _p: ours, what=what)
    return out


def _is_bench_document(path: Path, task: str) -> bool:
    """Whether ``path`` is the JSON document ``regla bench --task <task>`` wrote: for classify its schema
    (:data:`tables.RESULTS_RULES`), for det/seg/sam its task and a ``regla bench`` command line."""
    import json

    from ..errors import ReglaError
    from .tables import validate_results

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if task == "classify":
            validate_results(doc, str(path))
            return True
    except (OSError, ValueError, ReglaError):
        return False
    return (isinstance(doc, dict) and doc.get("task") == task
            and str(doc.get("command", "")).startswith("regla bench"))


def config_of(args: argparse.Namespace):
    """The :class:`~regla.bench.runner.BenchConfig` of this invocation, validated (unknown models included)."""
    import timm

    from .models import resolve_models
    from .runner import BenchConfig

    names = resolve_models(args.models, timm.list_models())
    cfg = BenchConfig(models=names, resolutions=sorted(set(args.resolutions)), threads=args.threads,
                      warmup=args.warmup, min_runs=args.min_runs, max_runs=args.max_runs,
                      target_s=args.target_time, rounds=args.rounds, memory=not args.no_memory,
                      backends=tuple(dict.fromkeys(args.backends)), calib=args.calib, calib_images=args.calib_images)
    cfg.validate()
    if args.reference is not None and args.reference not in names:
        raise UsageError(f"--reference {args.reference!r} is not among the benchmarked models ({', '.join(names)})")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write JSON/CSV/Markdown/PNGs. Returns 1 if every model failed."""
    from .report import compile_vs_ort, errors, int8_speedups, latency_ratios, text_table, write_outputs
    from .runner import run_bench

    out = output_folder(args.output, "classify" if args.tables is not None or args.profile else args.task)
    if args.tables is not None:
        from .tables import write_tables

        markdown, paths = write_tables(args.tables, out, reference=args.reference or DEFAULT_REFERENCE,
                                       plots=not args.no_plots)
        print(markdown)
        print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
        return 0
    if args.task == "sam":
        return run_sam(args, out)
    if args.task in ("det", "seg"):
        return run_dense(args, out)
    if args.dense_backbones is not None or args.sizes is not None:
        raise UsageError("--dense-backbones and --sizes apply to --task det|seg only")
    if args.calib is not None and any(b.endswith("-int8") for b in args.backends):
        from ..deploy.calib import check_folder

        check_folder(args.calib, "--calib")
    cfg = config_of(args)
    names = cfg.models
    reference = args.reference or DEFAULT_REFERENCE
    if args.models is None:
        from .models import DEFAULT_MODELS

        missing = [m.name for m in DEFAULT_MODELS if m.name not in names]
        if missing:
            print(f"regla bench: not registered, skipped: {', '.join(missing)}", file=sys.stderr)
    if args.profile:
        return run_profile(names, cfg, out)
    _warn_if_busy(cfg.threads)
    print(f"regla bench: {len(names)} models at {', '.join(map(str, cfg.resolutions))} px -> {out}/",
          file=sys.stderr)
    doc = run_bench(cfg, command=_command_line())
    paths = write_outputs(doc, out, reference=reference, plots=not args.no_plots)
    print(text_table(doc))
    for backend in cfg.backends:
        for res in cfg.resolutions:
            ratios = latency_ratios(doc, reference, res, backend)
            if ratios:
                print(f"\n{backend} latency of {reference} at {res} px / each model's (median of per-round ratios): "
                      + ", ".join(f"{label} {x:.2f}" for label, x in ratios))
    for line in int8_speedups(doc) + compile_vs_ort(doc):
        print(line)
    m = doc["machine"]
    print(f"\n{m['cpu']}, threads: {m['threads']}; {doc['duration_s']:.0f} s; wrote "
          + ", ".join(str(p) for p in paths.values()))
    for err in errors(doc):
        print(f"regla bench: warning: {err}", file=sys.stderr)
    return 1 if all(not r["latency_ms"] for r in doc["results"]) else 0


def run_sam(args: argparse.Namespace, out: Path) -> int:
    """``--task sam``: SAM encoders and decoder in ONNX Runtime (:mod:`regla.bench.sam`)."""
    from .sam import DEFAULT_SAM_ENCODERS, parse_spec, run_sam_bench, sam_markdown, write_sam_outputs

    specs = args.sam_encoders or list(DEFAULT_SAM_ENCODERS)
    for spec in specs:
        parse_spec(spec)  # every name checked before the first export
    sizes = [1024] if list(args.resolutions) == list(DEFAULT_RESOLUTIONS) else sorted(set(args.resolutions))
    if len(sizes) != 1:
        raise UsageError(f"--task sam times one resolution, got {sizes}")
    threads = args.threads or 1
    _warn_if_busy(threads)
    doc = run_sam_bench(specs, sizes[0], threads, args.rounds, eager=args.sam_eager, command=_command_line())
    paths = write_sam_outputs(doc, out, plots=not args.no_plots)
    print(sam_markdown(doc))
    print(f"\n{doc['machine']['cpu']}, threads: {threads}; {doc['duration_s']:.0f} s; wrote "
          + ", ".join(map(str, paths)))
    return 0


def run_dense(args: argparse.Namespace, out: Path) -> int:
    """``--task det|seg``: the whole detector / segmenter per backbone and size (:mod:`regla.bench.dense`).
    Every input is checked before any model is built."""
    from .dense import check_inputs, dense_markdown, run_dense_bench, write_dense_outputs

    if args.models is not None:
        raise UsageError(f"--models applies to --task classify; with --task {args.task} give --dense-backbones")
    if list(args.resolutions) != list(DEFAULT_RESOLUTIONS):
        raise UsageError(f"--resolutions applies to --task classify|sam; with --task {args.task} give --sizes WxH")
    if args.min_runs > args.max_runs:
        raise UsageError(f"--min-runs {args.min_runs} exceeds --max-runs {args.max_runs}")
    names, sizes, backends = check_inputs(args.task, args.dense_backbones, args.sizes, args.backends)
    _warn_if_busy(args.threads)
    print(f"regla bench: {args.task}: {len(names)} backbone(s) at {', '.join(f'{w}x{h}' for w, h in sizes)}, "
          f"{' and '.join(backends)} -> {out}/", file=sys.stderr)
    doc = run_dense_bench(args.task, names, sizes, backends, threads=args.threads, warmup=args.warmup,
                          min_runs=args.min_runs, max_runs=args.max_runs, target_s=args.target_time,
                          rounds=args.rounds, command=_command_line())
    paths = write_dense_outputs(doc, out, plots=not args.no_plots)
    print(dense_markdown(doc))
    print(f"\n{doc['machine']['cpu']}, threads: {doc['threads']}; {doc['duration_s']:.0f} s; wrote "
          + ", ".join(map(str, paths)))
    return 1 if all(not r["latency"] for r in doc["results"]) else 0


def run_profile(names: list[str], cfg, output: Path) -> int:
    """``--profile``: where ONNX Runtime spends its time, per model and resolution."""
    import json
    import tempfile

    from ..checkpoints import create_fused_model
    from ..deploy.export import export_onnx
    from ..outputs import atomic_write_text
    from .measure import physical_cores
    from .models import bench_model
    from .profile import format_profile, profile_eager, profile_onnx

    threads = cfg.threads or physical_cores()
    with tempfile.TemporaryDirectory(prefix="regla-profile-") as tmp:
        for name in names:
            model = create_fused_model(name)
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", min(cfg.resolutions))
            for res in cfg.resolutions:
                prof = profile_onnx(path, res, threads, runs=max(cfg.min_runs, 1))
                prof.update(model=name, resolution=res, threads=threads)
                out = atomic_write_text(output / f"profile_{name}_{res}.json", json.dumps(prof, indent=2))
                print(format_profile(bench_model(name).label, res, prof) + f"\n  -> {out}\n")
                if "eager" in cfg.backends:
                    prof = profile_eager(model, res, threads, runs=max(cfg.min_runs, 1))
                    prof.update(model=name, resolution=res, threads=threads)
                    out = atomic_write_text(output / f"profile_eager_{name}_{res}.json", json.dumps(prof, indent=2))
                    print(format_profile(bench_model(name).label + " (PyTorch eager, torch.profiler)", res, prof)
                          + f"\n  -> {out}\n")
    return 0
