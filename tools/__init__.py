"""Developer tools that read the source tree (csrc/, the ops' kernels): run from a checkout, never installed.

    python -m tools.cuda_emulator      csrc/ compiled for the CPU: the ``cuda`` backend without a GPU (tests use it)
    python -m tools.check_spills       nvcc -Xptxas -v on csrc/*.cu (or --built: the built _C's cubins): fails on
                                       register spills
    python -m tools.compile_kernels    every Triton kernel compiled for sm_80 / sm_90 without a GPU

The package that ``pip install`` ships holds the library only (pyproject.toml includes ``masksub_kernels*``).
"""
