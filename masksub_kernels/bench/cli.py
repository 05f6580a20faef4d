"""`make bench` / `masksub-bench` / `python -m masksub_kernels.bench`: the library's benchmarks on the best device.

1. Measures the device's copy bandwidth (bytes read + written), the roofline of every memory-bound op.
2. Runs the op suites (each provider of this library against official-style eager code, timm-style code and
   torch.compile of the eager code; forward, backward and full).
3. Writes benchmarks/results/<device>-<date>.json, .md and .png (--tiny: <device>-<date>-tiny.*): the JSON after
   each case (the train suite: after each model, whose providers are timed interleaved), all three after each
   suite; prints the table. A run cut short keeps the cases finished so far, and a suite stopped midway is marked
   in the files ("cut short after i of n cases": the JSON's incomplete_suites, the .md, the plot); Ctrl-C (status
   130) and SIGTERM (a cap's `timeout`: 143) write the .md and .png first.
   --append adds to the files of an earlier run on the same device and date, measured with the same versions, code
   and settings (refused otherwise): benchmarks/gpu_bench.sh runs each suite in a process of its own, under its own
   time cap (with --no-plot, then --report-only once at the end); without --append or --overwrite a measured run
   refuses to replace that day's files (status 2; --tiny files are replaced). A run that measures nothing (every
   record an error) exits with status 1.
   A sticky CUDA error (an illegal address, a launch failure: every later CUDA call of the process fails) is the
   failure of the case that raised it; the suite stops there, its later cases recorded as "not run: CUDA context
   lost after <case>" and the later suites as skipped (the JSON's context_lost), and the run exits with status 1.

--report-only RUN.json measures nothing: it rewrites RUN.md and RUN.png beside it from the JSON (a GPU run's, here
on the CPU: e.g. when the last suite was stopped by its cap after its JSON but before its .md and .png), and leaves
the JSON as it is, byte for byte (the measured record; an older run's labels are updated in the .md alone). The
run's own predictions are kept (a GPU run attaches the model of its code after each suite); a run without any gets
the performance model's of today in its .md where the card has a model file, labelled with the model's card and
date, and --repredict replaces them with those (the JSON too is rewritten then, with them).

The default run is short (minutes); --full sweeps more shapes and dtypes. On a machine without a GPU the suites
time the torch backend (the CPU path) against the baselines on the CPU and say so: GPU figures need a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .. import _backend
from . import report
from .runner import case_label, not_run_records, run_case, run_group, timing_groups
from .timing import copy_bandwidth_gbps, environment

SUITES = {
    "token_select": "masksub_kernels.bench.token_select",
    "grid_mask": "masksub_kernels.bench.grid_mask",
    "loss": "masksub_kernels.bench.loss",
    "linear_loss": "masksub_kernels.bench.linear_loss",
    "train": "masksub_kernels.bench.train_step",
}


def default_output_directory() -> Path:
    """benchmarks/results of the source tree when run from it, else ./benchmarks/results."""
    source_tree = Path(__file__).resolve().parents[2] / "benchmarks"
    return (source_tree if source_tree.is_dir() else Path("benchmarks")) / "results"


def _count(least: int):
    """An argparse type: an int >= ``least``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an int >= {least}, got {value}")
        return value

    parse.__name__ = f"int >= {least}"
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="masksub-bench",
        description=__doc__,
        allow_abbrev=False,  # options by their full names only: a prefix unique today is ambiguous when one is added
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--suites", nargs="+", action="extend", default=None, choices=list(SUITES),
        help="what to run (default: all; repeatable)",
    )  # fmt: skip
    parser.add_argument("--full", action="store_true", help="long sweeps: more shapes and dtypes")
    parser.add_argument(
        "--repeats", type=_count(1), default=None, help="timed repeats per case (default 30 GPU, 10 CPU)"
    )
    parser.add_argument(
        "--warmup", type=_count(1), default=None,
        help="untimed calls first, >= 1: the first compiles (default 5 GPU, 2 CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="directory for the result files (default: benchmarks/results of the source tree when run from it, else "
        "./benchmarks/results)",
    )  # fmt: skip
    parser.add_argument(
        "--tiny", action="store_true",
        help="smallest shapes, 2 repeats: a smoke test of the code (its files are named ...-tiny: never a run's)",
    )  # fmt: skip
    parser.add_argument(
        "--append", action="store_true",
        help="add to the result files already in --out for this device and date (a suite measured again replaces "
        "its earlier rows)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the result files already in --out for this device and date (a measured run refuses otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--no-plot", action="store_true", help="no .png (gpu_bench.sh: one plot at the end, with --report-only)"
    )
    parser.add_argument(
        "--report-only", type=Path, default=None, metavar="RUN.json",
        help="measure nothing: rewrite the .md and .png of a run's JSON beside it (its predictions kept; the JSON "
        "unchanged)",
    )  # fmt: skip
    parser.add_argument(
        "--repredict", action="store_true",
        help="with --report-only: replace the run's predictions with today's performance model's (in the JSON too)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.report_only is not None:  # it measures nothing, and writes beside RUN.json
        measuring = {
            "--device": args.device != "auto", "--suites": args.suites is not None, "--full": args.full,
            "--repeats": args.repeats is not None, "--warmup": args.warmup is not None, "--out": args.out is not None,
            "--tiny": args.tiny, "--append": args.append, "--overwrite": args.overwrite,
        }  # fmt: skip
        given = [flag for flag, used in measuring.items() if used]
        if given:
            parser.error(
                f"{', '.join(given)}: not with --report-only (it measures nothing, and writes beside RUN.json)"
            )
        if args.report_only.suffix != ".json":
            parser.error(f"--report-only takes a run's .json file, got {args.report_only}")
    elif args.repredict:
        parser.error("--repredict goes with --report-only (a measured run attaches the model of its own code)")
    if args.suites is None:
        args.suites = list(SUITES)
    repeated = sorted({suite for suite in args.suites if args.suites.count(suite) > 1})
    if repeated:
        parser.error(f"--suites names {', '.join(repeated)} more than once (each suite runs once)")
    if args.append and args.overwrite:
        parser.error("--append and --overwrite exclude each other")
    if args.full and args.tiny:  # (--tiny's smallest shapes won, silently: helper-335)
        parser.error("--full and --tiny exclude each other (--tiny: the smallest shapes; --full: more of them)")
    if args.report_only is not None and not args.report_only.is_file():
        what = "is a directory, not a run's .json file" if args.report_only.is_dir() else "no such file"
        parser.error(f"--report-only: {args.report_only}: {what}")
    if args.report_only is None:  # before anything is measured: a bad --out would fail only at the first write
        out = args.out if args.out is not None else default_output_directory()
        named = f"--out {out}" if args.out is not None else f"the default output directory {out} (--out another)"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"{named}: not a directory that can be made ({exc.strerror or exc})")
        if not os.access(out, os.W_OK | os.X_OK):
            parser.error(f"{named}: the directory is not writable")
    if args.device != "auto":
        try:
            device = torch.device(args.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device is available here (--device cpu, or auto)")
        if device.type == "cpu" and device.index is not None:
            parser.error(f"--device {args.device}: the CPU takes no index (--device cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return args


def _allow_recompiles(limit: int = 64) -> None:
    """The compile(official) baselines compile one function per shape and dtype (static shapes): dynamo keeps its
    cache per code object, shared by every torch.compile wrapper of that function, and after its recompile limit (8)
    it would run the function eagerly, timing eager code under the compile label (`--full` has up to 12 cases)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.6: cache_size_limit
        if hasattr(config, name):
            setattr(config, name, max(limit, getattr(config, name)))


class _Terminated(KeyboardInterrupt):
    """SIGTERM (benchmarks/gpu_bench.sh's caps: `timeout`) raised in the main thread as an interruption, so that a
    capped suite's files are written and marked as Ctrl-C's are (a KeyboardInterrupt: no provider's error)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def load_run(path: Path) -> dict:
    """A benchmark run's JSON, checked for what the report reads (ValueError naming the file and what is wrong, in
    words, otherwise: report.read_run, then the figures and the table)."""
    run = report.read_run(path)
    if "copy_gbps" not in run:
        raise ValueError(f"{path} is not a benchmark run's JSON: it has no 'copy_gbps' (the copy bandwidth)")
    for key, default in (("copy_gbps", None), ("seconds", 0.0)):
        value = run.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{path} is not a benchmark run's JSON: its {key!r} is {value!r}, not a finite number")
    for marks in ("skipped_suites", "incomplete_suites", "context_lost"):  # older runs: not all of them
        run.setdefault(marks, {})
    try:
        report.older_step_modes(run)  # older runs: the train suite's steps recorded as 'forward'
        report.markdown_table(run)  # every key the table reads
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
        # a figure of the wrong kind, a missing field, a time of 0 (no run records one: helper-349)
        what = {KeyError: f"no field {exc}", ZeroDivisionError: f"a time of 0: {exc}"}.get(type(exc), str(exc))
        raise ValueError(f"{path} is not a benchmark run's JSON: its records do not make the table ({what})") from None
    return run


def report_only(path: Path, repredict: bool = False, with_plot: bool = True) -> int:
    """The .md and .png of the run stored at ``path``, beside it: its own predictions kept (module docstring)."""
    try:
        run = load_run(path)
    except ValueError as exc:
        print(f"--report-only: {exc}", file=sys.stderr)
        return 2
    if repredict or not run.get("model"):
        device_name = run["environment"]["device"]
        _attach_predictions(run, None if device_name.startswith("CPU") else _model_path(device_name))
    # the JSON is the measured record: left byte for byte as it is (an older run's labels are relabelled in the .md
    # alone), except with --repredict, which replaces its predictions
    paths = report.write(run, path.parent, path.name.removesuffix(".json"), with_plot=with_plot, with_json=repredict)
    for kind, written in paths.items():
        print(f"wrote {kind}: {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except report.NotWritten as exc:  # a read-only folder (a fetched run's), a full disk: said, not a traceback
        if args.report_only is not None:
            hint = "--report-only writes RUN.md and RUN.png beside RUN.json: copy it into a writable folder first"
        else:
            hint = "what was measured since the last file written is lost; --out a writable directory"
        print(f"masksub-bench: {exc} ({hint})", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.report_only is not None:
        return report_only(args.report_only, args.repredict, with_plot=not args.no_plot)
    _allow_recompiles()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    # the train suite's library rows run the process's backend (the op suites name theirs): off a GPU the torch
    # backend, as the header says; on a GPU the process's (MASKSUB_BACKEND), checked before anything runs
    try:
        requested = _backend.get_backend()  # MASKSUB_BACKEND read here, also where the run uses torch (a typo refused)
        backend = requested if on_gpu else "torch"
        with _backend.use_backend(backend):  # (an unknown or unavailable one: a ValueError / RuntimeError here)
            pass
    except (ValueError, RuntimeError) as exc:
        cpu = "" if on_gpu else " (a run off a GPU uses the torch backend: unset MASKSUB_BACKEND)"
        print(f"masksub-bench: the process's backend (MASKSUB_BACKEND): {exc}{cpu}", file=sys.stderr)
        return 2
    with _backend.use_backend(backend):
        return _measure(args, device, on_gpu)


def _measure(args: argparse.Namespace, device: torch.device, on_gpu: bool) -> int:
    repeats = args.repeats if args.repeats is not None else (2 if args.tiny else 30 if on_gpu else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5 if on_gpu else 2)
    env = environment(device)
    print(f"masksub_kernels benchmarks on {env['device']}")
    if not on_gpu:
        print(
            "No GPU here: these are CPU figures of the torch backend (the CPU path) against the eager baselines. "
            "The Triton/CUDA kernel figures need a GPU (run benchmarks/gpu_bench.sh there)."
        )
    # one date for every suite of a run that crosses midnight (gpu_bench.sh sets it): the files are the run's
    date = os.environ.get("MASKSUB_BENCH_DATE") or datetime.date.today().isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise ValueError(date)
        datetime.date.fromisoformat(date)
    except ValueError:
        print(f"masksub-bench: MASKSUB_BENCH_DATE must be a date, YYYY-MM-DD; got {date!r}", file=sys.stderr)
        return 2
    # a smoke run's files are named apart: it never replaces the day's measured results
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{env['device']}-{date}").strip("-") + ("-tiny" if args.tiny else "")
    directory = args.out or default_output_directory()
    if not (args.tiny or args.append or args.overwrite) and (directory / f"{stem}.json").exists():
        print(
            f"masksub-bench: {directory / stem}.json exists (a run of this device and date): --append to add "
            "these suites to it, --overwrite to replace it, or another --out",
            file=sys.stderr,
        )
        return 2
    settings = {"full": args.full, "repeats": repeats, "warmup": warmup}
    previous = None
    if args.append:
        path = directory / f"{stem}.json"
        try:
            previous = _previous_run(path, args.suites, env, settings)
        except ValueError as exc:
            print(f"masksub-bench: --append: {exc}", file=sys.stderr)
            return 2
        if previous is None:
            print(f"--append: no earlier run at {path}: starting one")
    if previous:  # the same denominator for every record of the table
        copy_gbps = previous["copy_gbps"]
        print(f"copy bandwidth: {copy_gbps:.1f} GB/s (bytes read + written; the earlier run's, in the table's files)")
    else:
        copy_gbps, *copy_range = copy_bandwidth_gbps(device, megabytes=64 if args.tiny else 1024)
        print(f"copy bandwidth: {copy_gbps:.1f} GB/s (bytes read + written; p20-p80 {report.copy_range(copy_range)})")
    records = previous["records"] if previous else []
    earlier = len(records)  # an appended run's records: this invocation's come after them
    run = {
        "date": date,
        "environment": env,
        "copy_gbps": copy_gbps,
        # the p80 and p20 copies' GB/s: how far the denominator of every '% of copy' can be trusted
        "copy_gbps_range": previous.get("copy_gbps_range") if previous else copy_range,
        **settings,
        "tiny": args.tiny,
        "skipped_suites": previous["skipped_suites"] if previous else {},
        # suites stopped midway (a cap, a crash, Ctrl-C): suite -> {"cases_done": i, "cases": n}, until they end
        "incomplete_suites": previous["incomplete_suites"] if previous else {},
        # suites stopped by a sticky CUDA error: suite -> {"after": case, "error": ..., "not_run": records}
        "context_lost": previous["context_lost"] if previous else {},
        "seconds": previous["seconds"] if previous else 0.0,
        "records": records,
    }
    if previous and previous.get("model"):  # the model file of the earlier suites' predictions (until the next one)
        run["model"] = previous["model"]
    model_path = _model_path(env["device"]) if on_gpu else None
    stopping = threading.current_thread() is threading.main_thread()  # signal handlers: the main thread's only
    default_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if stopping else None
    begun: list[str] = []  # the suites asked for that this invocation started (_run_suites), finished or not
    try:
        lost = _run_suites(run, args, device, directory, stem, model_path, begun)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (_Terminated): the files with what finished, marked
        if stopping:  # `timeout` signals the process, then its group: a second SIGTERM must not cut this write
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (its -k SIGKILL still ends a write that hangs)
        signal_name = "SIGTERM" if isinstance(stop, _Terminated) else "SIGINT (Ctrl-C)"
        # the suites never started: not begun (a finished one has its rows, or none: a suite of zero cases, which
        # is not 'not run'), nor under way (incomplete_suites: marked so before it is begun)
        never = [suite for suite in args.suites if suite not in begun and suite not in run["incomplete_suites"]]
        for later in never:  # asked for: the files say so
            run["skipped_suites"][later] = f"not run: stopped by {signal_name}"
        _attach_predictions(run, model_path)  # the cut suite's rows too (a capped GPU suite: the usual case)
        report.write(run, directory, stem, with_plot=not args.no_plot)
        cut = "; ".join(f"{s} {report.cut_short(run, s)}" for s in run["incomplete_suites"])
        print(f"masksub-bench: stopped by {signal_name}{f' ({cut})' if cut else ''}: the finished cases are in "
              f"{directory / stem}.json / .md", file=sys.stderr)  # fmt: skip
        return 143 if isinstance(stop, _Terminated) else 130
    finally:
        if stopping:
            signal.signal(signal.SIGTERM, default_sigterm)
    paths = report.write(run, directory, stem, with_plot=not args.no_plot)
    print()
    print(report.markdown_table(run))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    if lost is not None:  # a failure, whatever else was measured: the later cases never ran
        suite, mark = lost
        later = args.suites[args.suites.index(suite) + 1 :]
        nor = f", nor the suites after it ({', '.join(later)})" if later else ""
        print(
            f"masksub-bench: FAILED: CUDA context lost in the {suite} suite at {mark['after']} ({mark['error']}): "
            f"{mark['not_run']} later records of it not run{nor}; rerun them in a fresh process (--append). The "
            f"finished cases are in {directory / stem}.json / .md",
            file=sys.stderr,
        )
        return 1
    measured = records[earlier:]
    if not measured or all("error" in r for r in measured):  # nothing measured: a failure, not a result
        print(f"nothing measured ({measured[0]['error']}, ...)" if measured else "nothing measured", file=sys.stderr)
        return 1
    return 0


def _run_suites(run: dict, args: argparse.Namespace, device: torch.device, directory: Path, stem: str,
                model_path: Path | None, begun: list[str]) -> tuple[str, dict] | None:  # fmt: skip
    """Each suite's cases into ``run["records"]``, the files written after each case (JSON) and suite (all); a
    suite under way is marked in ``run["incomplete_suites"]`` until its last case ends, so that a run stopped
    within it (a cap's SIGTERM, Ctrl-C, a crash) says so in its files; each suite is added to ``begun`` as it
    starts (a stopped run marks the others not run). A sticky CUDA error stops the run (module docstring): returns
    (its suite, its mark in ``run["context_lost"]``), else None."""
    records, incomplete = run["records"], run["incomplete_suites"]
    for number, suite in enumerate(args.suites):
        started, first, lost = time.perf_counter(), len(records), None
        try:
            incomplete[suite] = {"cases_done": 0, "cases": None}  # stopped before its cases are known: said too
            begun.append(suite)
            try:
                module = importlib.import_module(SUITES[suite])
            except ImportError as exc:
                run["skipped_suites"][suite] = f"not available: {exc}"
                del incomplete[suite]
                print(f"[{suite}] skipped: {exc}")
                continue
            try:
                suite_cases = module.cases(device, full=args.full, tiny=args.tiny)
            except Exception as exc:  # a suite that cannot list its cases: said in the files; the next suite runs
                run["skipped_suites"][suite] = f"its cases failed: {type(exc).__name__}: {exc}"
                del incomplete[suite]
                print(f"[{suite}] skipped: its cases failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            print(f"[{suite}] {len(suite_cases)} cases", flush=True)
            incomplete[suite] = {"cases_done": 0, "cases": len(suite_cases)}
            # the JSON now, before the first case ends: a process killed in it (a segfault, a sticky CUDA error,
            # `timeout -k`'s SIGKILL) leaves its suite marked (else it would leave no trace)
            report.write(run, directory, stem, json_only=True)
            done, units = 0, timing_groups(suite_cases)
            for position, unit in enumerate(units):  # a case alone, or a group timed interleaved (runner.py)
                case_started = time.perf_counter()
                timed = dict(repeats=run["repeats"], warmup=run["warmup"], copy_gbps=run["copy_gbps"])
                by_case = [run_case(unit[0], device, **timed)] if len(unit) == 1 else run_group(unit, device, **timed)
                for case, case_records in zip(unit, by_case):
                    for record in case_records:
                        records.append(record)
                        if record.get("context_lost") and lost is None:
                            lost = {"after": case_label(case, record["mode"]), "error": record["error"]}
                        if "not_run" in record:
                            summary = f"not run: {record['not_run']}"
                        else:
                            summary = record.get("error") or f"{record['median_ms']:.3f} ms"
                        if record.get("host_ms") is not None:
                            summary += f" (host {report.host_cell(record)})"
                        print(f"  {case.shape} {case.dtype} {case.provider} {record['mode']}: {summary}", flush=True)
                # where a suite's time goes (compilation, JIT, the measurement), e.g. in the log of a capped GPU step:
                # per case, or per group (its cases' times are interleaved: one figure for them all)
                print(
                    f"    [{time.perf_counter() - case_started:.1f} s, {time.perf_counter() - started:.0f} s in]",
                    flush=True,
                )
                done += len(unit)
                incomplete[suite]["cases_done"] = done
                if lost is not None:  # a sticky CUDA error: the suite's later cases, and the later suites, not run
                    for case in (case for later in units[position + 1 :] for case in later):
                        records.extend(not_run_records(case, lost["after"]))
                    lost["not_run"] = sum("not_run" in record for record in records[first:])
                    run["context_lost"][suite] = lost
                    for later in args.suites[number + 1 :]:
                        run["skipped_suites"][later] = f"not run: CUDA context lost after {lost['after']}"
                    print(f"[{suite}] CUDA context lost at {lost['after']} ({lost['error']}): stopped, "
                          f"{lost['not_run']} later records not run", file=sys.stderr, flush=True)  # fmt: skip
                    break
                # the JSON after each case (or group): a crash (a segfault, a sticky CUDA error) or a cap keeps the
                # finished cases, marked as a part of their suite
                report.write(run, directory, stem, json_only=True)
            del incomplete[suite]
        finally:  # a stopped suite's time too
            run["seconds"] = round(run["seconds"] + time.perf_counter() - started, 1)
        _attach_predictions(run, model_path)
        paths = report.write(run, directory, stem, with_plot=not args.no_plot)  # after each suite: a cap keeps it
        print(f"[{suite}] done in {time.perf_counter() - started:.0f} s, written to {paths['json']}", flush=True)
        if lost is not None:
            return suite, lost
    return None


def _model_path(device_name: str) -> Path | None:
    """The performance model's file for this GPU (report.model_file), or None with a line saying why none is
    attached: a card the model does not cover (H100 SXM / H200 SXM only), or its file missing (the files are the
    source checkout's: an installed package run elsewhere has none)."""
    if report.model_card(device_name) is None:
        print(f"performance model: no predictions attached: the model covers the H100 SXM and H200 SXM only; "
              f"{device_name} has none")  # fmt: skip
        return None
    directory = default_output_directory()
    found = report.model_file(directory, device_name)
    if found is None:
        print(f"performance model: no predictions attached for {device_name}: the model's files "
              f"(model-sm90.json for an H200 SXM, model-sm90-H100.json for an H100 SXM, written by tools/perf_model "
              f"in the source checkout) are not in {directory}")  # fmt: skip
    return found


def _attach_predictions(run: dict, model_path: Path | None) -> None:
    """The performance model's predicted time beside each measured record of its card (tools/perf_model)."""
    if model_path is not None:
        print(f"performance model: {report.attach_predictions(run, model_path)} records beside {model_path.name}")


# facts a run may fail to read without being another run (nvidia-smi's driver version: a 10 s timeout on a busy
# machine): unread on one side is not a difference
UNREAD_IS_UNKNOWN = ("driver",)


def _previous_run(path: Path, suites: list[str], environment: dict, settings: dict) -> dict | None:
    """The run stored at ``path`` without the records of ``suites`` (they are measured again), or None where there
    is none; ValueError where it is not a run's JSON, or where it was measured otherwise than this run would be
    (another device, versions, code or settings: one table's rows must be alike, and the file keeps one set)."""
    if not path.is_file():
        return None
    run = load_run(path)
    earlier = {**run["environment"], **{key: run.get(key) for key in settings}}
    now = {**environment, **settings}
    unread = {key for key in UNREAD_IS_UNKNOWN if earlier.get(key) is None or now.get(key) is None}
    differences = [
        f"{key} {earlier.get(key)!r} there, {now.get(key)!r} now"
        for key in sorted((set(earlier) | set(now)) - unread)
        if earlier.get(key) != now.get(key)
    ]
    if differences:
        raise ValueError(
            f"the run in {path} was measured otherwise ({'; '.join(differences)}): --overwrite to replace it, or "
            "another --out"
        )
    replaced = sum(r["suite"] in suites for r in run["records"])
    if replaced:  # --append measures these suites again: their earlier rows go (one set of rows per suite)
        again = sorted({r["suite"] for r in run["records"] if r["suite"] in suites})
        print(f"masksub-bench: --append: replacing the {replaced} earlier records of {', '.join(again)}")
    run["records"] = [r for r in run["records"] if r["suite"] not in suites]
    for marks in ("skipped_suites", "incomplete_suites", "context_lost"):
        run[marks] = {suite: mark for suite, mark in run[marks].items() if suite not in suites}
    return run


if __name__ == "__main__":
    sys.exit(main())
