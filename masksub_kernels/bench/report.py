"""Result files of a benchmark run: JSON (every figure with its context), a Markdown table, a PNG plot."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import textwrap
from collections import defaultdict
from pathlib import Path

MODEL_VARIANTS = ("", "nchw", "CE, class ids")  # the model's variant of each benchmark case (tools/perf_model)
BASELINE = "official"  # op suites: speed-up = official-style time / provider time
TRAIN_BASELINE = "plain"  # training steps: MaskSub step time / plain step time, beside the ideal ratio
# suites whose figure is TFLOP/s (the fused-linear loss): their bytes are no roofline, so no row of theirs shows
# GB/s or % of copy, a row without TFLOP/s (the 'recompute mlm15' rows: 15% of the work counted) included
COMPUTE_BOUND_SUITES = ("linear_loss",)


def _compute_bound(record: dict) -> bool:
    """Whether ``record``'s GB/s and % of copy are left blank: a compute-bound suite's row, or any with TFLOP/s."""
    return bool(record.get("tflops")) or record["suite"] in COMPUTE_BOUND_SUITES


def older_step_modes(run: dict) -> int:
    """The train suite's rows of an older run relabelled as they are recorded now: mode 'step' (runner.STEP), not
    'forward' (each row timed a whole training step, forward + backward + optimizer step, then as now); the number
    relabelled. For a run read back (cli.load_run: --report-only, --append)."""
    older = [r for r in run["records"] if r["suite"] == "train" and r["mode"] == "forward"]
    for record in older:
        record["mode"] = "step"
    return len(older)


RECORD_KEYS = ("suite", "shape", "dtype", "mode", "provider")  # what every row of a run's table is keyed by (names)
MARK_KEYS = ("model", "skipped_suites", "incomplete_suites", "context_lost")  # a run's objects beside its records


def read_run(path: Path) -> dict:
    """A benchmark run's JSON read back, with an environment naming its device and records keyed by RECORD_KEYS: a
    ValueError naming the file and what is wrong, in words, otherwise (an empty or truncated file, another tool's
    JSON such as model-sm90.json or linear-loss-memory-*.json). Shared by cli.load_run and tools.perf_model.measured.
    """

    def refuse(why: str) -> ValueError:
        return ValueError(f"{path} is not a benchmark run's JSON: {why}")

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise refuse(f"it could not be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise refuse(f"no JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); empty or cut short?") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; arrays nested past the stack
        raise refuse(f"no JSON this reads ({str(exc).split(';')[0]})") from None
    if not isinstance(run, dict) or not isinstance(run.get("environment"), dict):
        raise refuse("no 'environment' object at its top level (not a masksub_kernels.bench run)")
    if not isinstance(run["environment"].get("device"), str):
        raise refuse("its 'environment' names no 'device' (not a masksub_kernels.bench run)")
    if not isinstance(run.get("records"), list):
        raise refuse("no 'records' list at its top level")
    for i, record in enumerate(run["records"]):
        missing = [key for key in RECORD_KEYS if key not in record] if isinstance(record, dict) else RECORD_KEYS
        if missing:
            raise refuse(f"record {i} has no {', '.join(repr(key) for key in missing)}")
        named = next((key for key in RECORD_KEYS if not isinstance(record[key], str)), None)
        if named is not None:  # (a table row's names: a list or a number there made tracebacks or odd rows)
            raise refuse(f"record {i}'s {named!r} is {record[named]!r}, not a name")
    marks = next((key for key in MARK_KEYS if not isinstance(run.get(key, {}), dict)), None)
    if marks is not None:
        raise refuse(f"its {marks!r} is {type(run[marks]).__name__} {run[marks]!r:.40}, not an object")
    return run


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def host_cell(record: dict) -> str:
    """The host time of a GPU record, with 'host-bound' where it is >= the GPU median (bench/timing.py); '-' on
    the CPU, where the median is the host time."""
    if record.get("host_ms") is None:
        return "-"
    return f"{record['host_ms']:.3f}{' host-bound' if record.get('host_bound') else ''}"


# the cards the performance model covers (tools/perf_model), by their files' stems: the SXM forms only
MODEL_STEMS = {"H200": "model-sm90", "H100": "model-sm90-H100"}


def model_card(device_name: str) -> str | None:
    """The card of a device name that the performance model covers ('H200', 'H100'), or None: another card, or
    another form of the chip (PCIe, NVL: other SMs, clocks, bandwidth; the SXM card's model would be wrong there).
    The card's name as a word: a GH200 (Grace Hopper, 'NVIDIA GH200 480GB') is no H200."""
    name = device_name.upper()
    if "PCIE" in name or "NVL" in name:
        return None
    return next((card for card in MODEL_STEMS if re.search(rf"(?<![A-Z0-9]){card}(?![A-Z0-9])", name)), None)


def model_file(directory: Path, device_name: str) -> Path | None:
    """The performance model's predictions for this card (tools/perf_model writes them), where there are some:
    benchmarks/results/model-sm90.json for an H200 SXM, model-sm90-H100.json for an H100 SXM (model_card)."""
    card = model_card(device_name)
    path = directory / f"{MODEL_STEMS[card]}.json" if card else None
    return path if path is not None and path.exists() else None


def attach_predictions(run: dict, model_path: Path) -> int:
    """Put the model's predicted time beside each measured record of this library's providers (masksub[triton],
    masksub[cuda]) for the same case and provider (a GPU run calibrates the model: measured / predicted per op and
    backend), and beside the fused-linear loss's full rows (the op, its chunk sweep, official, compile(official);
    the chunk floor's pair at other heads).
    Returns how many records got one."""
    model = json.loads(model_path.read_text())
    predicted = {
        (r["suite"], r["shape"], r["dtype"], r["mode"], r.get("provider", "masksub[triton]")): r["predicted_us"]
        for r in model["records"]
        if r["variant"] in MODEL_VARIANTS
    }
    # the fused-linear loss (compute-bound: model["linear_loss"], its own section): the fused op and the two
    # composites it is compared with, whose predictions rest on assumed matmul efficiency and passes
    linear = model.get("linear_loss")
    if linear is not None:
        for entry in linear["providers"] + linear.get("chunk_sweep", []):  # the sweep: masksub[triton]:R=..
            provider = entry["provider"].split(" ")[0]  # 'masksub[triton] (grads in forward)' -> 'masksub[triton]'
            key = ("linear_loss", linear["shape"], linear["dtype"], linear["mode"], provider)
            predicted[key] = entry["predicted_us"]
        for v in linear.get("vocabularies", []):  # other heads: the chunk floor against the budget alone
            budget = f"masksub[triton]:R={v['budget_rows']}"  # the benchmark's name (sweep_provider)
            for provider, us in (("masksub[triton]", v["rule_us"]), (budget, v["budget_us"])):
                predicted[("linear_loss", v["shape"], linear["dtype"], linear["mode"], provider)] = us
    count = 0
    for record in run["records"]:
        value = predicted.get((record["suite"], record["shape"], record["dtype"], record["mode"], record["provider"]))
        if value is not None:
            record["predicted_ms"] = value / 1000
            count += 1
        else:  # not this model's: an older model's figure must not pass under its label
            record.pop("predicted_ms", None)
    facts = model["environment"]
    run["model"] = {"file": model_path.name, **{key: facts.get(key) for key in ("label", "card", "date", "triton")}}
    return count


def copy_range(low_high) -> str:
    """'12-70 GB/s': the copy bandwidth's spread between its p80 and p20 copies."""
    return f"{low_high[0]:.0f}-{low_high[1]:.0f} GB/s"


def cut_short(run: dict, suite: str) -> str | None:
    """'cut short after i of n cases' where ``suite`` was stopped midway (its other cases missing), else None."""
    mark = run.get("incomplete_suites", {}).get(suite)
    if mark is None:
        return None
    if mark["cases"] is None:  # stopped while importing the suite or building its cases
        return "cut short before its first case"
    return f"cut short after {mark['cases_done']} of {mark['cases']} cases"


def _header_notes(run: dict) -> list[str]:
    """What the files must say about themselves beyond the table: a CPU run's meaning, suites cut or skipped."""
    notes = []
    if run["environment"]["device"].startswith("CPU"):
        notes.append(
            "No GPU: CPU times of this library's torch backend (the CPU path) against the eager baselines on the CPU, "
            "not its Triton / CUDA kernels (the triton version above is installed, not used)."
        )
    spread = run.get("copy_gbps_range")
    if spread and spread[1] > 1.5 * spread[0]:
        notes.append(
            f"The copy bandwidth varied {copy_range(spread)} between its copies (p20-p80; a shared or throttled "
            f"machine): every '% of copy' below is as uncertain."
        )
    for suite, mark in run.get("context_lost", {}).items():
        notes.append(
            f"**{suite}: CUDA context lost at {mark['after']}** ({mark['error']}): a sticky CUDA error, after which "
            f"every CUDA call of the process fails; its {mark['not_run']} later rows were not run (not their "
            "failures: a fresh process runs them)."
        )
    for suite in run.get("incomplete_suites", {}):
        notes.append(
            f"**{suite}: {cut_short(run, suite)}** (a cap, a crash or a stop): its other rows are missing, and a "
            "ratio whose baseline was not reached shows '-'."
        )
    notes += [f"{suite}: skipped ({reason})." for suite, reason in run.get("skipped_suites", {}).items()]
    return notes


OVER_COPY = "\u2020"  # marks a '% of copy' over 100 (the note under the header, COPY_NOTE)
COPY_NOTE = (
    f"{OVER_COPY} over 100% of copy: the copy's GB/s count a read and a write per byte moved (a read + write "
    "roofline); an op that mostly reads (a loss forward: the logits read, a row's loss written) can stream faster "
    "than that (DRAM loses less time switching between reads and writes); and the design column counts every pass "
    "as read from memory, where a later pass may find its data still in L2: such a figure is no fraction of the "
    "op's own roofline."
)


def _percent(fraction: float | None) -> str:
    """A '% of copy' cell: the fraction as a percentage, marked OVER_COPY past 100."""
    if fraction is None:
        return "-"
    return f"{100 * fraction:.1f}{OVER_COPY if fraction > 1 else ''}"


def markdown_table(run: dict) -> str:
    """Per suite, shape, dtype and mode: each provider's median time, GB/s, % of copy bandwidth (on the minimal
    bytes, and on the bytes the design moves where they differ), speed-up vs the official style measured in the
    same run; the model's prediction beside where a model file was found."""
    env = run["environment"]
    # the library's version and commit, each where the run has it (older runs: neither, or a commit alone)
    named = " ".join(filter(None, (env.get("masksub_kernels"), f"({env['commit']})" if env.get("commit") else "")))
    code = f"masksub_kernels {named} | " if named else ""
    spread = f"; p20-p80 {copy_range(run['copy_gbps_range'])}" if run.get("copy_gbps_range") else ""
    # cases with a cap of their own (whole training steps: 10) time fewer repeats than the run's: each record says
    fewer = defaultdict(set)
    for r in run["records"]:
        if r.get("repeats") is not None and r["repeats"] != run.get("repeats"):
            fewer[r["suite"]].add(r["repeats"])
    exceptions = "; ".join(f"{suite}: {'/'.join(map(str, sorted(n)))}" for suite, n in fewer.items())
    lines = [
        f"Device: {env['device']} | {code}torch {env['torch']} "
        f"| triton {env.get('triton')} | date {run['date']} | "
        f"copy bandwidth {run['copy_gbps']:.0f} GB/s (read + write{spread}) | {run.get('repeats')} repeats"
        f"{f' ({exceptions})' if exceptions else ''}, {run.get('warmup')} warm-up"
        + (" | --full" if run.get("full") else "")
        + (" | --tiny: a smoke test of the code, not a measurement" if run.get("tiny") else ""),
        *(["", *(f"- {note}" for note in _header_notes(run))] if _header_notes(run) else []),
        "",
        "% of copy: the case's GB/s over the copy bandwidth above (a device-to-device copy's bytes read + written: a "
        "read + write roofline, not the op's own mix of reads and writes), on the minimal bytes (each input read "
        "once, each output written once) and, where this library's design moves more (the loss: 6 passes over the "
        "logits in full, not 4), on the design's bytes.",
    ]
    over = [
        r
        for r in run["records"]
        if not _compute_bound(r) and max(r.get("fraction_of_copy") or 0, r.get("fraction_of_copy_design") or 0) > 1
    ]
    if over:  # no figure over 100% without its reason
        lines.append(COPY_NOTE)
    if run.get("model"):
        model = run["model"]
        of = ", ".join(f"{k} {model[k]}" for k in ("card", "date", "triton") if model.get(k))  # older runs: none
        lines.append(f"predicted ms: {model['label']} ({model['file']}{f': {of}' if of else ''}).")
    if any(r.get("host_ms") is not None for r in run["records"]):
        lines.append(
            "host ms (GPU runs): the median CPU time for the call to return (Python, launches, any wait on the GPU "
            "inside it), each call on a drained GPU, beside the GPU time (median ms, CUDA events). host-bound: host "
            "ms >= median ms: back to back such calls run at the host's pace, and the median may be launch "
            "overhead rather than kernels (their device time is lower: torch.profiler; "
            "masksub_kernels/bench/timing.py)."
        )
    lines += [
        "",
        "| suite | shape | dtype | mode | provider | median ms (p20-p80) | host ms | predicted ms | GB/s | % of copy "
        "(minimal) | % of copy (design) | vs official | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for record in run["records"]:
        groups[(record["suite"], record["shape"], record["dtype"], record["mode"])].append(record)
    # a run's records say whether it timed a model's providers interleaved (bench/train_step.py); older runs did not
    interleaved = any(r.get("timing") == "interleaved" for r in run["records"] if r["suite"] == "train")
    order = "; each model's providers timed interleaved, round by round" if interleaved else ""
    train = [r for r in run["records"] if r["suite"] == "train"]
    train_host = any(r.get("host_ms") is not None for r in train)
    train_lines = [
        "",
        f"End-to-end training steps (images/s; step-time ratio to plain training, beside the ideal{order}). "
        "peak MiB: the most allocated during one step above what was allocated at its start (the weights, the "
        "optimizer's state, the data and whatever the step before left are not counted), not the process's peak."
        + (
            ""
            if train_host or not train
            else " host ms: '-' on the CPU, where the median is the host time."
            if env["device"].startswith("CPU")
            else " host ms: not measured (whole steps get no host-time pass, masksub_kernels/bench/timing.py): a "
            "host-bound step is not marked."
        ),
        "",
        "| model | dtype | provider | median ms (p20-p80) | host ms | images/s | time / plain | ideal "
        "| peak MiB above the step's start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (suite, shape, dtype, mode), records in groups.items():
        if suite == "train":
            plain = next((r for r in records if r["provider"] == TRAIN_BASELINE and "median_ms" in r), None)
            for r in records:
                if "error" in r or "not_run" in r:
                    what = f"error: {r['error']}" if "error" in r else f"not run: {r['not_run']}"
                    train_lines.append(f"| {shape} | {dtype} | {r['provider']} | {what} ||||||")
                    continue
                ratio = r["median_ms"] / plain["median_ms"] if plain else None
                train_lines.append(
                    f"| {shape} | {dtype} | {r['provider']} | {_fmt(r['median_ms'], 1)} ({_fmt(r['p20_ms'], 1)}-"
                    f"{_fmt(r['p80_ms'], 1)}) | {host_cell(r)} | {_fmt(r.get('images_per_s'), 0)} | "
                    f"{_fmt(ratio, 2)} | {_fmt(r.get('ideal_ratio'), 1)} | {_fmt(r.get('peak_mem_mb'), 0)} |"
                )
            continue
        baseline = next((r for r in records if r["provider"] == BASELINE and "median_ms" in r), None)
        for r in records:
            if "error" in r or "not_run" in r:
                what = f"error: {r['error']}" if "error" in r else f"not run: {r['not_run']}"
                lines.append(f"| {suite} | {shape} | {dtype} | {mode} | {r['provider']} | {what} ||||||||")
                continue
            speedup = baseline["median_ms"] / r["median_ms"] if baseline else None
            if mode == "forward" and r.get("forward_computes_gradients"):
                speedup = None  # its forward computes the gradients too: not comparable with a plain forward
            if r.get("labels_differ") or r.get("one_branch"):
                speedup = None  # other inputs than the baseline's (the fused-linear suite's MLM-like labels), or
                # half its work (Liger's main-branch CE against the two-branch composite)
            fraction, design = r.get("fraction_of_copy"), r.get("fraction_of_copy_design")
            gbps = r.get("gbps")
            if _compute_bound(r):  # the fused-linear loss: its bytes are no roofline (TFLOP/s: the table below)
                gbps = fraction = design = None
            lines.append(
                f"| {suite} | {shape} | {dtype} | {mode} | {r['provider']} | {_fmt(r['median_ms'])} "
                f"({_fmt(r['p20_ms'])}-{_fmt(r['p80_ms'])}) | {host_cell(r)} | {_fmt(r.get('predicted_ms'))} | "
                f"{_fmt(gbps, 1)} | {_percent(fraction)} | {_percent(design)} | "
                f"{_fmt(speedup, 2)}{'x' if speedup else ''} | {_fmt(r.get('peak_mem_mb'), 1)} |"
            )
    if len(train_lines) > 5:
        lines += train_lines
    compute = [r for r in run["records"] if r.get("tflops")]
    if compute:  # compute-bound suites (linear_loss): the useful flops of the composite per second
        lines += [
            "",
            "Compute-bound cases (TFLOP/s of the composite's useful flops; peak MiB above the inputs, and beyond the "
            "returned tensors too: the most held at once by what the call freed before returning, GPU runs only, "
            "masksub_kernels/bench/timing.py):",
            "",
            "| suite | shape | dtype | mode | provider | TFLOP/s | peak MiB | peak beyond returned MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['suite']} | {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['tflops']:.3f} | "
            f"{_fmt(r.get('peak_mem_mb'), 1)} | {_fmt(r.get('transient_mem_mb'), 1)} |"
            for r in compute
        ]
    return "\n".join(lines) + "\n"


PLOT_MAX_INCHES = 16  # a panel's width at most (x 110 dpi: 1760 px), whatever the number of shapes and providers


def plot(run: dict, path: Path) -> bool:
    """Dot chart of full-step (forward + backward) medians on a log axis: one panel per suite, stacked, each with its
    shapes' groups of dots (only the providers measured at that shape), one colour per provider across the panels, at
    most PLOT_MAX_INCHES wide; False without matplotlib or without such a record. Dots, not bars: a bar's height on a
    log axis depends on where the axis starts, so bars make ratios look larger than they are; a dot's
    height is its value, and equal ratios are equal distances."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [r for r in run["records"] if r["mode"] == "full" and "median_ms" in r and r["suite"] != "train"]
    if not records:
        return False
    suites = defaultdict(lambda: defaultdict(dict))  # suite -> (shape, dtype) -> provider -> median (record order)
    for r in records:
        suites[r["suite"]][(r["shape"], r["dtype"])].setdefault(r["provider"], r["median_ms"])
    providers = list(dict.fromkeys(r["provider"] for r in records))
    colours = {p: plt.get_cmap("tab20")(i % 20) for i, p in enumerate(providers)}
    # a shape's group: 0.22 inch a dot and a gap, and room for its label (wrapped at 18 characters, ~0.075 inch each)
    inches = [sum(max(0.22 * (len(by) + 1), 1.4) for by in shapes.values()) for shapes in suites.values()]
    width = min(PLOT_MAX_INCHES, max(6.0, max(inches) + 2.5))
    figure, axes = plt.subplots(len(suites), 1, figsize=(width, 3.2 * len(suites)), squeeze=False)
    for axis, (suite, shapes) in zip(axes[:, 0], suites.items(), strict=True):
        x, ticks, labels, drawn = 0, [], [], {}
        for (shape, dtype), by_provider in shapes.items():
            first = x
            for provider, median in by_provider.items():
                (drawn[provider],) = axis.plot(x, median, "o", markersize=7, color=colours[provider])
                x += 1
            ticks.append((first + x - 1) / 2)
            labels.append(f"{textwrap.fill(shape, 18)}\n{dtype}")
            x += 1  # a gap between shapes
        axis.set_xticks(ticks, labels, fontsize=7)
        axis.set_xlim(-1, x - 1)
        axis.set_yscale("log")
        axis.grid(True, which="both", axis="y", linewidth=0.4, alpha=0.5)
        axis.set_ylabel("fwd + bwd, median ms", fontsize=8)
        cut = cut_short(run, suite)
        axis.set_title(f"{suite}{f' ({cut})' if cut else ''}", fontsize=9, loc="left")
        axis.legend(drawn.values(), drawn.keys(), fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    kind = " | CPU: the torch backend, not the kernels" if run["environment"]["device"].startswith("CPU") else ""
    kind += " | --tiny: a smoke test, not a measurement" if run.get("tiny") else ""
    # suites cut short that have no panel here (the train suite, forward-only rows) are marked in the title
    unplotted = [f"{s} ({cut_short(run, s)})" for s in run.get("incomplete_suites", {}) if s not in suites]
    kind += f" | not drawn: {', '.join(unplotted)}" if unplotted else ""
    # one line a part (device and date, then each mark): a single line ran past the figure's edges
    title = f"{run['environment']['device']} - {run['date']} (lower is better){kind}".replace(" | ", "\n")
    width = int(figure.get_figwidth() * 14)  # characters of 9 pt a line holds
    figure.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    figure.tight_layout()  # (it makes room for the title)
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return True


def write(
    run: dict, directory: Path, stem: str, json_only: bool = False, with_plot: bool = True, with_json: bool = True
) -> dict[str, Path]:
    """The run as <stem>.json, .md and .png in ``directory`` (json_only: the JSON alone, after each case;
    with_json=False: the .md and .png alone, the JSON left as it is (--report-only: the measured record is the
    record, the .md and .png are derived from it); with_plot=False or no matplotlib: no .png, an earlier one left as
    it is; nothing to draw: an earlier one removed). Each file is
    written under a .partial name, then renamed: a cap that kills a write mid-file leaves the previous file whole.
    A file that cannot be written (a read-only folder, a full disk, a folder in its place) is a NotWritten naming it.
    """
    try:
        return _write(run, directory, stem, json_only, with_plot, with_json)
    except OSError as exc:  # the folder itself (each file's own failure: _replace)
        raise NotWritten(f"could not write into {directory}: {exc.strerror or exc}") from exc


class NotWritten(Exception):
    """A result file that could not be written (write): the CLI says so, without a traceback."""


def _write(run: dict, directory: Path, stem: str, json_only: bool, with_plot: bool, with_json: bool):
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stem}.json", "md": directory / f"{stem}.md", "png": directory / f"{stem}.png"}
    if with_json or json_only:
        _replace(paths["json"], lambda partial: partial.write_text(json.dumps(run, indent=1, default=str)))
    else:
        del paths["json"]
    if json_only:
        return {"json": paths["json"]}
    _replace(paths["md"], lambda partial: partial.write_text(markdown_table(run)))
    if not with_plot or not _replace(paths["png"], lambda partial: plot(run, partial)):
        if with_plot and importlib.util.find_spec("matplotlib") is not None and paths["png"].exists():
            paths["png"].unlink()  # nothing to draw: an earlier run's .png would sit beside this run's files
            print(f"removed {paths['png']}: nothing of this run to draw")
        del paths["png"]
    return paths


def _replace(path: Path, write) -> bool:
    """``write(partial)`` into ``path``.partial, then that renamed to ``path``; ``write``'s False: nothing written."""
    partial = path.with_name(path.name + ".partial")
    try:
        if write(partial) is False:
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a half-written .partial: not left beside the results
            partial.unlink(missing_ok=True)
        raise NotWritten(f"could not write {path}: {exc.strerror or exc}") from exc
    return True
