"""Committed floors: for each op, shape and mode, the % of copy bandwidth (design bytes) below which CI fails.

Set at the day's predictions minus a margin; they ratchet up as the kernels improve (``python -m
tools.perf_model.floors --update`` rewrites them from a fresh run, never lowering one unless asked).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARGIN = 0.9  # a floor is 90% of the prediction it was set from: room for compiler drift, not for regressions


def key(record: dict) -> str:
    variant = f" [{record['variant']}]" if record.get("variant") else ""
    return f"{record['suite']} | {record['shape']} | {record['dtype']}{variant} | {record['mode']}"


def floored(records: list[dict]) -> list[dict]:
    """The records that have floors: the Triton rows. The CUDA extension's rows (csrc.py) are compared with them
    instead; their loss rows are upper bounds, no ratchet for the kernels CI builds."""
    return [r for r in records if r.get("provider", "masksub[triton]") == "masksub[triton]"]


def load(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["floors"] if path.exists() else {}


def check(result: dict, floors: dict[str, float]) -> list[str]:
    """One message per prediction below its floor (records without a floor pass: new cases get one on --update)."""
    failures = []
    for record in floored(result["records"]):
        floor = floors.get(key(record))
        if floor is not None and record["percent_of_copy_design"] < floor:
            failures.append(f"{key(record)}: predicted {record['percent_of_copy_design']:.1f}% < floor {floor:.1f}%")
    return failures


def updated(result: dict, floors: dict[str, float], allow_lower: bool = False) -> dict[str, float]:
    new = dict(floors)
    for record in floored(result["records"]):
        floor = round(MARGIN * record["percent_of_copy_design"], 1)
        old = floors.get(key(record))
        new[key(record)] = floor if old is None or allow_lower else max(old, floor)
    return dict(sorted(new.items()))


def main(argv: list[str] | None = None) -> int:
    from .__main__ import FLOORS, run

    parser = argparse.ArgumentParser(prog="python -m tools.perf_model.floors", description=__doc__)
    parser.add_argument("--update", action="store_true", help="raise the floors to this run's predictions x MARGIN")
    parser.add_argument("--allow-lower", action="store_true", help="also lower floors (say why in the commit)")
    args = parser.parse_args(argv)
    result = run("H200")
    floors = load(FLOORS)
    if args.update:
        floors = updated(result, floors, args.allow_lower)
        note = "% of H200 copy bandwidth (design bytes) predicted by tools/perf_model, times MARGIN; CI fails below"
        FLOORS.write_text(
            json.dumps({"card": "H200", "margin": MARGIN, "note": note, "floors": floors}, indent=1) + "\n"
        )
        print(f"wrote {len(floors)} floors to {FLOORS}")
        return 0
    failures = check(result, floors)
    print("\n".join(failures) or "every prediction at or above its floor")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
