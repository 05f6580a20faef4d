"""pytest plugin: print each failure's report the moment the test fails, not in the summary at the end.

benchmarks/gpu_check.sh runs the test files under time caps (the GPU machine is lent for minutes); a step stopped by
its cap never reaches pytest's end-of-session summary, so on 2026-11-30 a failing property test left only its name
(``-v``) and no reason. With this plugin the failure's traceback (for a hypothesis test, its falsifying example) is
in the log as soon as it happens, under pytest-xdist too (the controller prints its workers' reports):

    python -m pytest -v -p benchmarks.failures_now tests/...
"""

from __future__ import annotations

import sys

_in_worker = [False]


def pytest_configure(config) -> None:
    # pytest-xdist loads -p plugins in its workers too, which share the controller's stderr: only the controller
    # prints (it gets every worker's reports), else each failure would be printed twice
    _in_worker[0] = hasattr(config, "workerinput")


def pytest_runtest_logreport(report) -> None:
    if not report.failed or _in_worker[0]:
        return
    print(f"\n===== FAILED {report.nodeid} ({report.when}), reported as it happened =====", file=sys.stderr)
    print(report.longreprtext, file=sys.stderr)
    for title, text in report.sections:  # captured stdout / stderr / log of the failing test
        if text.strip():
            print(f"----- {title} -----\n{text}", file=sys.stderr)
    sys.stderr.flush()
