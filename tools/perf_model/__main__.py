"""``python -m tools.perf_model``: predict every op at the benchmark shapes, run the calibration checks, write
benchmarks/results/model-sm90.{json,md} and compare against the committed floors (tools/perf_floors.json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ROOT / "tools" / "perf_floors.json"
RESULTS = ROOT / "benchmarks" / "results"


def run(card_name: str = "H200") -> dict:
    """Every prediction on ``card_name`` and the calibration checks, as the JSON written to the results."""
    from . import calibration, csrc, linear_loss, predict, workloads
    from .hardware import CARDS

    card = CARDS[card_name]
    cases = workloads.all_cases()
    reason = csrc.missing()  # the CUDA extension's row beside each Triton row, where nvcc is here
    cuda = csrc.predict_cases(card, cases) if reason is None else {}
    records = []
    for index, case in enumerate(cases):
        records.append(predict.record(card, predict.predict_case(card, case), case.headline))
        if index in cuda:
            records.append(predict.record(card, cuda[index], case.headline))
    return {
        "environment": predict.environment(card),
        "records": records,
        "cuda_vs_triton": csrc.comparison(records) if reason is None else f"not predicted: {reason}",
        "calibration": [check.as_dict() for check in calibration.checks()],
        "linear_loss": linear_loss.predict(card, records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf_model", description=__doc__)
    parser.add_argument("--card", default="H200", choices=["H200", "H100"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for model-sm90[-<card>].{json,md}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also write the raw result here (the CI test reads it)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("perf_model: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    from . import floors, predict

    result = run(args.card)
    print(predict.markdown(result))
    failures = floors.check(result, floors.load(FLOORS)) if args.card == "H200" else []  # floors are H200's
    for failure in failures:
        print(f"perf_model: BELOW FLOOR: {failure}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        stem = "model-sm90" if args.card == "H200" else f"model-sm90-{args.card}"
        for kind, path in predict.write(result, args.out, stem).items():
            print(f"wrote {kind}: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
