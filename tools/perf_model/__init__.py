"""A static performance model of the library's GPU kernels for sm_90 (H200 / H100), run without a GPU.

Each op's Triton launcher runs at the benchmark shapes on meta tensors while its kernels record their launches
(capture.py); each launch is compiled for sm_90a as Triton's JIT would specialise it, and its SASS read (sass.py):
the steady-state loop's instruction mix, registers, shared memory. model.py turns that, the bytes the design moves
and the card's figures (hardware.py) into a predicted time: the larger of memory (the roofline, or the loads a few
resident warps keep in flight) and compute (instruction issue or the MUFU special-function pipe, whichever is longer,
plus a load-latency chain where one block per SM runs at a time), adjusted for occupancy, plus launches (model.py's
docstring). calibration.py holds the model to figures measured by others. These are PREDICTIONS, not measurements.

    python -m tools.perf_model [--card H200] [--out benchmarks/results] [--no-write]
"""
