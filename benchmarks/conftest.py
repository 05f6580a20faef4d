"""pytest-benchmark entry to the op suites: `pytest benchmarks --benchmark-enable` (CPU or GPU).

The same cases as `make bench` (masksub_kernels.bench.*), timed by pytest-benchmark; on a GPU each call is
followed by a synchronize so that the wall clock measures the kernels.
"""
