"""Summarise baseline-vs-MaskSub runs of the training command: a table, a loss-curve plot, the logs.

    python -m masksub_kernels.training.replication RUNS_DIR OUT_DIR

RUNS_DIR holds one output directory per run, named ``baseline-seed<k>`` and ``masksub-seed<k>`` (what
docs/replication/run.sh and docs/replication/mlm/run.sh write). OUT_DIR receives ``logs/<run>.csv|json`` (the logs,
copied), ``summary.json`` and ``table.md`` (final accuracy mean +- std over seeds, final validation and training
loss, wall time) and ``curves.png`` (main-branch training loss and validation accuracy, mean over seeds with a +-1
std band). The standard deviation is the sample one (n - 1): none (``null``, "n/a") for an arm of one seed. Two
kinds of logs: ``masksub-train``'s per-epoch rows (top-1 on images) and ``masksub-train-mlm``'s per-round rows
(held-out MLM accuracy, against optimizer steps). Where the logs' meta records where the runs ran (git commit, start
time, CPU, torch threads, GPU: runlog.run_provenance), each arm's summary holds it under ``provenance`` and a line
under the table says it; logs without it (before 2026-12-07) give the line "not recorded in the logs", pointing to a
PROVENANCE.md beside the table (what the git history says of them) where there is one; logs that all record it
replace such a file's logs, and it is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass

from .runlog import PROVENANCE

__all__ = ["IMAGE", "TEXT", "load_runs", "log_kind", "plot_curves", "provenance", "summarise"]

ARMS = ("baseline", "masksub")


@dataclass(frozen=True)
class LogKind:
    """Which columns of a log row the summary reads: accuracy, the x axis, throughput."""

    accuracy: str
    accuracy_label: str
    x: str
    throughput: str
    throughput_label: str
    ylim: tuple[float, float] | None


IMAGE = LogKind("top1", "validation top-1 (%)", "epoch", "images_per_s", "images/s", (50.0, 100.0))
TEXT = LogKind("val_acc", "held-out MLM accuracy (%)", "step", "tokens_per_s", "tokens/s", None)


def log_kind(runs: dict[str, list[dict]]) -> LogKind:
    """TEXT for masksub-train-mlm logs (rows with 'val_acc'), IMAGE otherwise."""
    rows = [log["epochs"][0] for logs in runs.values() for log in logs if log["epochs"]]
    return TEXT if rows and "val_acc" in rows[0] else IMAGE


def load_runs(runs_dir: str) -> dict[str, list[dict]]:
    """{arm: [log.json of each seed, sorted by seed]} for the runs found in ``runs_dir``."""
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for name in sorted(os.listdir(runs_dir)):
        arm, _, seed = name.partition("-seed")
        path = os.path.join(runs_dir, name, "log.json")
        if arm in runs and seed.isdigit() and os.path.isfile(path):
            with open(path) as f:
                log = json.load(f)
            log["name"], log["seed"] = name, int(seed)
            runs[arm].append(log)
    for arm in ARMS:
        runs[arm].sort(key=lambda log: log["seed"])
    return runs


def _none_last(value) -> tuple[bool, str]:
    return value is None, str(value)


def provenance(logs: list[dict]) -> dict | None:
    """What the logs' meta records of where they ran: each field's distinct values (the start times' first and
    last), over each run's starts (its first start's and its resumes' records too), ``runs_without`` the logs that
    record none, ``runs_partly`` the runs resumed from a checkpoint older than the per-resume record; None where no
    log records any."""
    metas = [log["meta"] for log in logs]
    recorded = [m for m in metas if any(key in m for key in PROVENANCE)]
    if not recorded:
        return None
    # a resumed run's first start and each resume's (meta.first_start, meta.resumes' provenance, since 2026-12-07): a
    # run resumed under another commit, or on another machine, ran under both
    earlier = [r for m in recorded for r in (m.get("first_start"), *m.get("resumes", [])) if isinstance(r, dict)]
    out: dict = {
        key: sorted({m.get(key) for m in recorded} | {r[key] for r in earlier if key in r}, key=_none_last)
        for key in PROVENANCE
    }
    starts = sorted(r["started_utc"] for r in [*recorded, *earlier] if r.get("started_utc"))
    out["started_utc"] = [starts[0], starts[-1]] if starts else [None]
    out["runs_without"] = len(metas) - len(recorded)
    # resumed from a checkpoint of before the per-resume record (none, or early on 2026-12-07 the commit, dirty flag
    # and start time alone): where its earlier starts ran not all known
    out["runs_partly"] = sum(
        bool(m.get("resumes"))
        and (m.get("first_start") is None or any(key not in r for r in m["resumes"] for key in PROVENANCE))
        for m in recorded
    )
    return out


def _logs_without_provenance(logs_dir: str) -> list[str]:
    """The log.json copies in ``logs_dir`` whose meta records none of the provenance (a partial rerun into a folder
    of older logs leaves some)."""
    without = []
    for name in sorted(os.listdir(logs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(logs_dir, name)) as f:
                meta = json.load(f).get("meta", {})
            if not any(key in meta for key in PROVENANCE):
                without.append(name)
    return without


def _provenance_line(runs: dict[str, list[dict]]) -> str:
    p = provenance([log for logs in runs.values() for log in logs])
    if p is None:
        return "Provenance: not recorded in the logs."

    def words(key: str, none: str) -> str:
        return ", ".join(none if v is None else str(v) for v in p[key])

    commits = ", ".join("not a git checkout" if c is None else c[:12] for c in p["git_commit"])
    dirty = " (tracked files changed)" if True in p["git_dirty"] else ""
    first, last = p["started_utc"][0], p["started_utc"][-1]
    started = "unknown" if first is None else first if first == last else f"{first} to {last}"
    without = f"; {p['runs_without']} of the logs record none of it" if p["runs_without"] else ""
    if p.get("runs_partly"):
        without += (
            f"; {p['runs_partly']} resumed from older checkpoints (where their earlier starts ran not all recorded)"
        )
    return (f"Provenance (the logs' meta): commit {commits}{dirty}; started {started} (UTC); CPU "
            f"{words('cpu', 'unknown')}; torch threads {words('torch_threads', 'unknown')}; GPU {words('gpu', 'none')}"
            f"{without}.")  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1): None for one value, whose spread is unknown, not 0."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _spread(std: float | None, digits: int) -> str:
    return "n/a (1 seed)" if std is None else f"{std:.{digits}f}"


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per arm: seeds, final accuracy (each, mean, std), best accuracy mean, final validation loss (mean, std),
    final loss_main mean, wall time mean, throughput, the mean loss_main curve. Keys name the accuracy column:
    ``final_top1*`` for image runs, ``final_val_acc*`` for MLM runs."""
    kind = log_kind(runs)
    acc = kind.accuracy
    out = {}
    for arm, logs in runs.items():
        if not logs:
            continue
        lengths = {log["seed"]: len(log["epochs"]) for log in logs}
        if len(set(lengths.values())) > 1:  # a mean over other epochs, a curve past a shorter run's end: refused
            raise ValueError(f"the {arm} runs logged different numbers of epochs per seed ({lengths}): finish or "
                             "remove the shorter runs")  # fmt: skip
        final = [log["epochs"][-1] for log in logs]
        values = [row[acc] for row in final]
        mean, std = _mean_std(values)
        val_mean, val_std = _mean_std([row["val_loss"] for row in final])
        curve = [statistics.fmean(log["epochs"][e]["loss_main"] for log in logs) for e in range(len(logs[0]["epochs"]))]
        out[arm] = {
            "seeds": [log["seed"] for log in logs],
            "epochs": len(logs[0]["epochs"]),
            "final_" + kind.x: final[0][kind.x],
            f"final_{acc}": values,
            f"final_{acc}_mean": mean,
            f"final_{acc}_std": std,
            f"best_{acc}_mean": statistics.fmean(max(r[acc] for r in log["epochs"]) for log in logs),
            "final_val_loss_mean": val_mean,
            "final_val_loss_std": val_std,
            "final_loss_main_mean": statistics.fmean(row["loss_main"] for row in final),
            "final_loss_sub_mean": (
                statistics.fmean(row["loss_sub"] for row in final) if final[0].get("loss_sub") is not None else None
            ),
            "wall_time_s_mean": statistics.fmean(row["wall_time_s"] for row in final),
            f"{kind.throughput}_mean": statistics.fmean(
                statistics.fmean(r[kind.throughput] for r in log["epochs"]) for log in logs
            ),
            "mean_loss_main_curve": curve,
            "command": logs[0]["meta"]["command"],
        }
        if (where := provenance(logs)) is not None:  # (logs from before meta recorded it: no key, as before)
            out[arm]["provenance"] = where
    return out


def _table(summary: dict[str, dict], kind: LogKind) -> str:
    acc = kind.accuracy
    lines = [
        f"| run | seeds | {kind.x}s | final {kind.accuracy_label} mean ± std | per seed | best mean | final validation "
        f"loss mean ± std | final train loss_main | wall time / run (s) | {kind.throughput_label} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {len(s['seeds'])} | {s['final_' + kind.x]} | {s[f'final_{acc}_mean']:.2f} ± "
            f"{_spread(s[f'final_{acc}_std'], 2)} | {', '.join(f'{v:.2f}' for v in s[f'final_{acc}'])} | "
            f"{s[f'best_{acc}_mean']:.2f} | {s['final_val_loss_mean']:.4f} ± {_spread(s['final_val_loss_std'], 4)} | "
            f"{s['final_loss_main_mean']:.4f} | {s['wall_time_s_mean']:.0f} | {s[f'{kind.throughput}_mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: str) -> None:
    """Training loss_main and validation accuracy per epoch (round), mean over seeds +- 1 std, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kind = log_kind(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm, colour in zip(ARMS, ("tab:blue", "tab:red")):
        logs = runs[arm]
        if not logs:
            continue
        for ax, key in zip(axes, ("loss_main", kind.accuracy)):
            values = np.array([[row[key] for row in log["epochs"]] for log in logs])
            epochs = np.array([row[kind.x] for row in logs[0]["epochs"]])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(logs) > 1 else 0 * values.mean(0)
            ax.plot(epochs, mean, color=colour, label=f"{arm} ({len(logs)} seeds)")
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
    axes[0].set(xlabel=kind.x, ylabel="training loss (main branch)", title="Training loss")
    axes[1].set(xlabel=kind.x, ylabel=kind.accuracy_label, title="Validation accuracy", ylim=kind.ylim)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs_dir, out_dir = argv
    runs = load_runs(runs_dir)
    try:
        summary = summarise(runs)
    except ValueError as error:  # runs that cannot be summarised: what to do, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    for logs in runs.values():
        for log in logs:
            for ext in ("csv", "json"):
                shutil.copy(
                    os.path.join(runs_dir, log["name"], f"log.{ext}"),
                    os.path.join(out_dir, "logs", f"{log['name']}.{ext}"),
                )
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    where, history = _provenance_line(runs), os.path.join(out_dir, "PROVENANCE.md")
    if os.path.isfile(history) and not _logs_without_provenance(os.path.join(out_dir, "logs")):
        os.remove(history)  # it told where replaced logs came from; every log in out_dir/logs records its own
        print(f"removed {history}: it gave the provenance of logs replaced here; those there now record their own")
    elif os.path.isfile(history) and where.endswith(("not recorded in the logs.", "record none of it.")):
        where = where[:-1] + " (PROVENANCE.md, beside this file, gives it from the git history)."
    table = _table(summary, log_kind(runs)) + "\n" + where + "\n"
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table)
    plot_curves(runs, os.path.join(out_dir, "curves.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
