"""Benchmarks of masksub_kernels: op suites, end-to-end training steps, result files. Entry point: ``cli.main``."""
