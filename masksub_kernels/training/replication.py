"""Summarise baseline-vs-MaskSub runs of the training command: a table, a loss-curve plot, the logs.

    python -m masksub_kernels.training.replication RUNS_DIR OUT_DIR

RUNS_DIR holds one output directory per run, named ``baseline-seed<k>`` and ``masksub-seed<k>`` (what
docs/replication/run.sh writes). OUT_DIR receives ``logs/<run>.csv|json`` (the per-epoch logs, copied),
``summary.json`` and ``table.md`` (final top-1 mean +- std over seeds, final training loss, wall time) and
``curves.png`` (main-branch training loss and validation top-1 per epoch, mean over seeds with a +-1 std band).
The standard deviation is the sample one (n - 1).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys

__all__ = ["load_runs", "plot_curves", "summarise"]

ARMS = ("baseline", "masksub")


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


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per arm: seeds, final top-1 (each, mean, std), best top-1 mean, final loss_main mean, wall time mean, and the
    first epoch at which the mean training loss_main goes below thresholds (a convergence-speed measure)."""
    out = {}
    for arm, logs in runs.items():
        if not logs:
            continue
        final = [log["epochs"][-1] for log in logs]
        top1 = [row["top1"] for row in final]
        mean, std = _mean_std(top1)
        curve = [statistics.fmean(log["epochs"][e]["loss_main"] for log in logs) for e in range(len(logs[0]["epochs"]))]
        out[arm] = {
            "seeds": [log["seed"] for log in logs],
            "epochs": len(logs[0]["epochs"]),
            "final_top1": top1,
            "final_top1_mean": mean,
            "final_top1_std": std,
            "best_top1_mean": statistics.fmean(max(r["top1"] for r in log["epochs"]) for log in logs),
            "final_loss_main_mean": statistics.fmean(row["loss_main"] for row in final),
            "final_loss_sub_mean": (
                statistics.fmean(row["loss_sub"] for row in final) if final[0].get("loss_sub") is not None else None
            ),
            "wall_time_s_mean": statistics.fmean(row["wall_time_s"] for row in final),
            "images_per_s_mean": statistics.fmean(
                statistics.fmean(r["images_per_s"] for r in log["epochs"]) for log in logs
            ),
            "mean_loss_main_curve": curve,
            "command": logs[0]["meta"]["command"],
        }
    return out


def _table(summary: dict[str, dict]) -> str:
    lines = [
        "| run | seeds | epochs | final top-1 (%) mean ± std | per seed | best top-1 mean | final train loss_main | "
        "wall time / run (s) | images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {len(s['seeds'])} | {s['epochs']} | {s['final_top1_mean']:.2f} ± {s['final_top1_std']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in s['final_top1'])} | {s['best_top1_mean']:.2f} | "
            f"{s['final_loss_main_mean']:.4f} | {s['wall_time_s_mean']:.0f} | {s['images_per_s_mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: str) -> None:
    """Training loss_main and validation top-1 per epoch, mean over seeds +- 1 std, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm, colour in zip(ARMS, ("tab:blue", "tab:red")):
        logs = runs[arm]
        if not logs:
            continue
        for ax, key in zip(axes, ("loss_main", "top1")):
            values = np.array([[row[key] for row in log["epochs"]] for log in logs])
            epochs = np.arange(1, values.shape[1] + 1)
            mean, std = values.mean(0), values.std(0, ddof=1) if len(logs) > 1 else 0 * values.mean(0)
            ax.plot(epochs, mean, color=colour, label=f"{arm} ({len(logs)} seeds)")
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="training loss (main branch)", title="Training loss")
    axes[1].set(xlabel="epoch", ylabel="validation top-1 (%)", title="Validation top-1", ylim=(50, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs_dir, out_dir = argv
    runs = load_runs(runs_dir)
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    for logs in runs.values():
        for log in logs:
            for ext in ("csv", "json"):
                shutil.copy(
                    os.path.join(runs_dir, log["name"], f"log.{ext}"),
                    os.path.join(out_dir, "logs", f"{log['name']}.{ext}"),
                )
    summary = summarise(runs)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(_table(summary))
    plot_curves(runs, os.path.join(out_dir, "curves.png"))
    print(_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
