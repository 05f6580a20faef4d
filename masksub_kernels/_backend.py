"""Which implementation of an op runs: ``triton``, ``cuda`` (a compiled extension) or ``torch`` (the reference).

This is the one place that decides. Every op declares its implementations once (``ops/_common.masksub_op``); on
each call it asks :func:`resolve_backend` for the backend, which checks that the backend can take tensors of that
device (the error names what is missing) and records the choice for :func:`last_backend`.

The choice is a process-wide setting (``set_backend`` / the ``MASKSUB_BACKEND`` environment variable, read on
first use) resolved per call from the device of the op's tensors:

- ``auto`` (default): CUDA tensors run the Triton kernels (the CUDA extension if Triton is missing or older than
  3.4, the PyTorch reference if neither is); tensors of any other device run the PyTorch reference.
- ``triton``: the Triton kernels; CUDA tensors, and CPU tensors only under ``TRITON_INTERPRET=1`` (the tests).
- ``cuda``: the functions of a compiled extension registered for the tensors' device type. The extension
  ``masksub_kernels._C`` (csrc/) serves CUDA tensors; :func:`register_extension` adds one for another device type
  (the tests register csrc/ compiled for the CPU this way). ``auto`` chooses it for CUDA tensors only.
- ``torch``: the PyTorch reference everywhere.

Nothing here touches a GPU at import time: availability is probed lazily, when first asked.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import itertools
import os
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ._sources import sources_digest

_CSRC = Path(__file__).resolve().parents[1] / "csrc"  # present in a source checkout only (stale_extension)

BACKEND_NAMES = ("auto", "triton", "cuda", "torch")
_CONCRETE = ("triton", "cuda", "torch")

_requested: str | None = None  # None until first use: then MASKSUB_BACKEND or "auto"
_last_used: dict[str, str] = {}
_op_names: dict[str, tuple[str, ...]] = {}  # the names the library's ops report under -> the backends they have
_extensions: dict[str, Any] = {}  # device type -> extension module registered for it (besides _C for "cuda")


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, or true / on / yes / y in any
    case: Triton's own reading; ``false``, ``off``, ``2`` or `` 1`` (spaces are not stripped) are off for Triton, so
    here too)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")


# Triton decides when @triton.jit runs, i.e. when this package is imported, whether its kernels are interpreted:
# TRITON_INTERPRET set later changes what triton_interpreted() reads, not the kernels (a CPU tensor accepted
# then would fail inside Triton with "0 active drivers")
_INTERPRETED_AT_IMPORT = triton_interpreted()


def _cpu_interpreter() -> bool:
    """Whether the Triton kernels run on the CPU interpreter: TRITON_INTERPRET on now and when they were made."""
    return _INTERPRETED_AT_IMPORT and triton_interpreted()


@functools.cache
def _cuda_device_present() -> bool:
    return torch.cuda.is_available()


# The oldest Triton the kernels pass the tests with (tools/gpu_versions_env.sh runs the suite under other releases).
# On 2026-12-02 under the interpreter: 3.4, 3.5, 3.6 and 3.8 passed; 3.2 and 3.3 drew other token selections than
# the reference (a silently wrong mask); 3.1 refused the kernels (tl.arange of a non-constexpr bound).
MIN_TRITON = (3, 4)


def _version_tuple(version: str) -> tuple[int, ...]:
    """(3, 6, 0) from '3.6.0' or '3.4.0+git1234': the leading dot-separated integers."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


# The oldest torch the tests pass with (pyproject.toml's floor; README, "Versions"): refused at import, with the
# reason, rather than left to fail obscurely (torch 2.4: custom_op cannot read the ops' annotations) or partly (2.5).
MIN_TORCH = (2, 8)
if _version_tuple(torch.__version__) < MIN_TORCH:
    raise ImportError(
        f"masksub_kernels needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {torch.__version__}: older releases "
        "fail its tests (README, 'Versions'); install a newer torch"
    )


@functools.cache
def _triton_missing() -> str | None:
    """Why the Triton backend cannot run here, or None when it can."""
    try:
        triton = importlib.import_module("triton")
    except ImportError as exc:
        return f"the 'triton' package does not import ({exc})"
    version = str(getattr(triton, "__version__", "") or "unknown")
    if _version_tuple(version.lstrip("v")) < MIN_TRITON:
        oldest = ".".join(map(str, MIN_TRITON))
        return (
            f"Triton {version} is older than {oldest}, the oldest release the kernels pass their tests with "
            f"(3.2 and 3.3 selected other tokens than the reference, 3.1 did not compile the kernels): install "
            f"Triton >= {oldest} (torch >= 2.8 brings one)"
        )
    if _cpu_interpreter() or _cuda_device_present():
        return None
    late = " (it is set now, after the import: the kernels were made for a GPU then)" if triton_interpreted() else ""
    return (
        "Triton needs a CUDA device, or TRITON_INTERPRET=1 set before importing masksub_kernels to run its kernels on "
        f"the CPU interpreter{late}"
    )


@functools.cache
def _compiled_extension_missing() -> str | None:
    """Why masksub_kernels._C does not import, or is stale, or None when it imports and is current."""
    cut_short = _cut_short_library()
    if cut_short is not None:
        return cut_short
    try:
        module = importlib.import_module("masksub_kernels._C")
    except ImportError as exc:
        forced = "`MASKSUB_BUILD_CUDA=1 pip install --no-build-isolation .` (or -e .) in the source checkout"
        if isinstance(exc, ModuleNotFoundError) and exc.name == "masksub_kernels._C":  # never built (helper-335)
            return (
                f"the CUDA extension masksub_kernels._C is not built: {_build_obstacle()}. An install says why it "
                f"skipped the build only in pip's verbose output (`pip install -v`); {forced} builds it or stops "
                "with the reason"
            )
        return (  # a file that does not load (built against another torch, a missing library)
            f"the CUDA extension masksub_kernels._C does not import ({exc}); rebuild it with {forced}, on a machine "
            "with a CUDA toolkit and a CUDA build of torch"
        )
    return stale_extension(module)


def _cut_short_library() -> str | None:
    """Why masksub_kernels._C's file must not be loaded: an ELF library shorter than its own headers say (an
    interrupted copy or build). The dynamic loader maps it and faults on the missing pages: SIGBUS, the process
    killed without a word (``python -m masksub_kernels`` included). Reads the headers only (64-bit little-endian
    ELF: x86-64, aarch64; other files are left to the import)."""
    if "masksub_kernels._C" in sys.modules:  # loaded already (or a stand-in, whose __spec__ find_spec refuses)
        return None
    try:
        spec = importlib.util.find_spec("masksub_kernels._C")
    except (ImportError, ValueError):  # the import says why
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        with open(spec.origin, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(64)
            if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":  # (too short for a header: dlopen refuses it)
                return None
            ph_offset, sh_offset = struct.unpack_from("<QQ", header, 0x20)
            ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", header, 0x36)
            if ph_size < 56 or ph_count == 0xFFFF:  # not a 64-bit program header, or PN_XNUM's count elsewhere
                return None  # (the import judges such a file)
            extent = max(ph_offset + ph_size * ph_count, sh_offset + sh_size * sh_count)
            if ph_offset + ph_size * ph_count <= size:  # the segments the loader maps: each one's end in the file
                f.seek(ph_offset)
                table = f.read(ph_size * ph_count)
                for i in range(ph_count):
                    offset, _, _, file_size = struct.unpack_from("<QQQQ", table, i * ph_size + 8)
                    extent = max(extent, offset + file_size)
    except OSError:
        return None  # unreadable: the import says why
    if size >= extent:
        return None
    return (
        f"the CUDA extension {spec.origin} is cut short ({size} bytes, its ELF headers need {extent}: an interrupted "
        "copy or build), and loading it would kill the process (SIGBUS): rebuild it with `MASKSUB_BUILD_CUDA=1 pip "
        "install --no-build-isolation .` (or -e .) in the source checkout, or delete it"
    )


def _build_obstacle(default_home: str = "/usr/local/cuda") -> str:
    """What this machine lacks to build the extension, as setup.py's own checks find it (an install records no
    reason): a CPU-only torch, no CUDA toolkit; or, with both, where else to look."""
    if torch.version.cuda is None:
        kind = "a ROCm (HIP) build" if getattr(torch.version, "hip", None) else "a CPU-only build"
        return f"torch {torch.__version__} is {kind}: the extension needs a CUDA build of torch"
    homes = [os.environ.get(name, "").strip() for name in ("CUDA_HOME", "CUDA_PATH")] + [default_home]
    if not shutil.which("nvcc") and not any(home and Path(home, "bin", "nvcc").exists() for home in homes):
        return f"no CUDA toolkit here: no nvcc on PATH, in CUDA_HOME, CUDA_PATH or {default_home}"
    return (
        f"torch {torch.__version__} and a CUDA toolkit are here, so the install was told to skip it "
        "(MASKSUB_BUILD_CUDA=0), could not see torch (a build without --no-build-isolation) or failed to build it"
    )


def stale_extension(module: Any, csrc: Path = _CSRC) -> str | None:
    """Why ``module`` (masksub_kernels._C) must not run: in a source checkout (csrc/ beside the package: an editable
    install, or the checkout on PYTHONPATH), an extension whose SOURCES_DIGEST is not that of csrc/ now (built before
    a change of its sources, or copied in) runs the kernels of other sources, silently (helper-328). An installed
    package has no csrc/: its extension was built with it (a csrc/ folder without bindings.cpp beside site-packages,
    another distribution's, is not this checkout's)."""
    if not (csrc / "bindings.cpp").is_file():
        return None
    try:
        now = sources_digest(csrc)
    except OSError as exc:  # a source unreadable as it is read (removed meanwhile): not a reason to crash
        return f"the sources in {csrc} could not be read to check the CUDA extension against them ({exc})"
    built = getattr(module, "SOURCES_DIGEST", None)
    if built == now:
        return None
    if not built:
        recorded = "no digest recorded"
    elif built == "MASKSUB_SOURCES_DIGEST":  # bindings.cpp built without setup.py's -D (a cpp_extension.load of csrc/)
        recorded = "built without setup.py: no digest recorded"
    else:
        recorded = "digest " + built
    return (
        f"the CUDA extension {getattr(module, '__file__', module)} was built from other sources than {csrc} holds "
        f"now ({recorded}, csrc/ now {now}): rebuild it with "
        "`MASKSUB_BUILD_CUDA=1 pip install --no-build-isolation -e .` in the checkout, or select the 'triton' or "
        "'torch' backend"
    )


def _cuda_missing() -> str | None:
    """Why the ``cuda`` backend cannot run here, or None when some extension serves a device of this machine."""
    if _extensions:
        return None
    reason = _compiled_extension_missing()
    if reason is None and not _cuda_device_present():
        reason = "the CUDA extension masksub_kernels._C imports, but this machine has no CUDA device to run it on"
    return reason


def _missing(name: str) -> str | None:
    return {"triton": _triton_missing, "cuda": _cuda_missing, "torch": lambda: None}[name]()


def register_extension(device_type: str, module: Any | None) -> None:
    """Serve the ``cuda`` backend for tensors of ``device_type`` with ``module`` (None removes it).

    ``module`` has the functions of ``masksub_kernels._C`` and takes tensors of that device type. ``auto`` never
    chooses it for a device other than CUDA. The tests register csrc/ compiled for the CPU (tools/cuda_emulator.py)
    for ``"cpu"``, so that the very sources of the extension run without a GPU.
    """
    if not isinstance(device_type, str) or device_type == "meta":
        raise ValueError(f"device_type must be a device type name such as 'cpu', got {device_type!r}")
    if module is None:
        _extensions.pop(device_type, None)
    else:
        _extensions[device_type] = module


class _Extension:
    """An extension module's functions; one it lacks (an extension built from older sources) is a clear error."""

    def __init__(self, module: Any):
        self._module = module

    def __getattr__(self, name: str):
        function = getattr(self._module, name, None)
        if function is None:
            raise RuntimeError(
                f"the CUDA extension {self._module.__name__} has no {name}: it was built from older sources; rebuild "
                "it (pip install --no-build-isolation . in the source checkout) or select the 'triton' or 'torch' "
                "backend"
            )
        return function


def extension(device_type: str) -> _Extension:
    """The extension that runs the ``cuda`` backend on tensors of ``device_type``."""
    if device_type in _extensions:
        return _Extension(_extensions[device_type])
    return _Extension(importlib.import_module("masksub_kernels._C"))


def available_backends() -> list[str]:
    """Concrete backends that can run in this process, e.g. ``['triton', 'torch']``."""
    return [name for name in _CONCRETE if _missing(name) is None]


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"the backend must be a name (str), one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    if name.lower() not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")
    name = name.lower()
    if name != "auto":
        reason = _missing(name)
        if reason is not None:
            raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return name


def get_backend() -> str:
    """The requested backend name: ``auto``, ``triton``, ``cuda`` or ``torch``."""
    global _requested
    if _requested is None:
        # set but empty (MASKSUB_BACKEND= in a shell): unset, as for most variables
        _requested = _check_name(os.environ.get("MASKSUB_BACKEND", "").strip() or "auto")
    return _requested


def set_backend(name: str) -> None:
    """Select the backend for every op in this process (``auto``, ``triton``, ``cuda`` or ``torch``).

    Raises ValueError for an unknown name and RuntimeError naming what is missing for one that cannot run here.
    """
    global _requested
    _requested = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed ops with backend ``name``, then restore the previous choice (as it was:
    MASKSUB_BACKEND not yet read stays unread, so that a bad value there does not refuse ``use_backend("torch")``)."""
    global _requested
    previous = _requested
    set_backend(name)
    try:
        yield
    finally:
        _requested = previous


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device; a CUDA device on a machine without one is a clear RuntimeError (not a driver
    error from deep inside a kernel launch)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        kind = ValueError if isinstance(device, str) else TypeError
        raise kind(f"device must be a torch.device or a device string such as 'cuda:0', got {device!r}") from exc
    if device.type == "cuda" and not _cuda_device_present():
        raise RuntimeError(f"device {device} was asked for, but torch finds no CUDA device on this machine")
    return device


def _serves(name: str, device_type: str) -> bool:
    """Whether backend ``name`` can take tensors of ``device_type`` in this process."""
    if name == "torch":
        return True
    if _missing(name) is not None:
        return False
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and _cpu_interpreter())
    return device_type in _extensions or (device_type == "cuda" and _compiled_extension_missing() is None)


def resolve_backend(
    device: torch.device | str, op: str | Iterable[str] | None = None, implemented: Iterable[str] | None = None
) -> str:
    """The concrete backend an op on tensors of ``device`` runs with under the current setting.

    When ``op`` is given (a name or several) the choice is recorded, so that ``last_backend(op)`` can say what ran
    (the ops call it so; a caller's own op may too). ``implemented``: the backends the op has (``auto`` skips the
    others); by default those of the library's op of that name (a name of no library op: all three). Raises
    RuntimeError when the requested backend cannot take tensors of that device, or the op lacks it, saying what it
    needs.
    """
    if implemented is None and isinstance(op, str):  # every op call of the library: no checks to run
        ops = (op,)
        implemented = implemented_by(ops)
    else:
        ops = _names("op", op, allowed=None)
        implemented = implemented_by(ops) if implemented is None else _names("implemented", implemented, _CONCRETE)
    if not implemented:
        raise ValueError("implemented must name at least one backend (triton, cuda, torch), got none")
    device = check_device(device)
    requested = get_backend()
    if requested == "auto":
        # never the cuda backend for another device type (an extension registered for it: the tests' emulator)
        preference = ("triton", "cuda", "torch") if device.type == "cuda" else ("torch", "triton")
        chosen = next((b for b in preference if b in implemented and (b == "torch" or _serves(b, device.type))), None)
        if chosen is None:
            why = "; ".join(f"{b}: {_missing(b) or 'not for ' + device.type + ' tensors'}" for b in implemented)
            raise RuntimeError(f"no backend of {', '.join(implemented)} can take tensors on {device} here ({why})")
    elif requested not in implemented:
        name = "/".join(ops or ("this op",))
        raise RuntimeError(
            f"backend {requested!r} has no implementation of {name}: select one of {', '.join(implemented)} "
            "(mk.set_backend / MASKSUB_BACKEND)"
        )
    elif requested == "torch" or _serves(requested, device.type):
        chosen = requested
    elif device.type == "cuda":  # a CUDA tensor, a backend that cannot run here: say what is missing
        raise RuntimeError(f"backend {requested!r} cannot run on {device}: {_compiled_reason(requested)}")
    elif requested == "triton":
        late = triton_interpreted() and not _INTERPRETED_AT_IMPORT
        late = " (it was set after the import: the kernels were made for a GPU then)" if late else ""
        hint = f" (or TRITON_INTERPRET=1 set before importing masksub_kernels to run them on the CPU{late})"
        raise RuntimeError(  # (the interpreter's hint for CPU tensors only: it is wrong for meta ones)
            f"backend 'triton' got tensors on {device}: the Triton kernels need CUDA tensors"
            + (hint if device.type == "cpu" else "")
        )
    else:
        registered = ", ".join(sorted(_extensions)) or "none"
        raise RuntimeError(
            f"backend 'cuda' got tensors on {device}: the CUDA extension needs CUDA tensors "
            f"(extensions registered for other device types: {registered})"
        )
    for name in ops:
        _last_used[name] = chosen
    return chosen


def _names(argument: str, value, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    """``value`` (None, a name or an iterable of names) as a tuple of names, each in ``allowed`` where given."""
    if value is None and allowed is None:
        return ()
    names = (value,) if isinstance(value, str) and allowed is None else value
    if isinstance(names, str) or not isinstance(names, Iterable):  # implemented="triton": a name, not its letters
        expected = "a name or an iterable of names" if allowed is None else "an iterable of backend names"
        raise TypeError(f"{argument} must be {expected}, got {value!r}")
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or (allowed is not None and name not in allowed):
            raise ValueError(
                f"{argument}: {name!r} is not {'a name' if allowed is None else 'one of ' + ', '.join(allowed)}"
            )
    return names


def _compiled_reason(name: str) -> str:
    """Why backend ``name`` cannot take CUDA tensors (Triton does not import or is too old; _C does not import)."""
    reason = _triton_missing() if name == "triton" else _compiled_extension_missing()
    return reason or "no CUDA device is present"


def implemented_by(names: Iterable[str]) -> list[str]:
    """The backends that every op of ``names`` has (a name of no library op: all three)."""
    names = tuple(names)
    return [b for b in _CONCRETE if all(b in _op_names.get(name, _CONCRETE) for name in names)]


def register_op_names(names: Iterable[str], implemented: Iterable[str] = _CONCRETE) -> None:
    """Names that ``last_backend`` knows before their op has run (each op of the library registers its own), with
    the backends their op has (what ``resolve_backend`` answers for that name)."""
    implemented = tuple(implemented)
    for name in names:
        _op_names[name] = implemented


def last_backend(op: str | None = None) -> str | dict[str, str] | None:
    """The backend the last call of ``op`` ran with: None before its first call (``op`` None: a dict of the ops
    called so far, {} before any). A name that is no op's (a typo) is a ValueError, not None. ``masksub_loss`` and
    ``linear_masksub_loss`` report every call of their ops, which the single-branch losses share (those report only
    their own calls). A name that is not a str is a TypeError."""
    if op is None:
        return dict(_last_used)
    if not isinstance(op, str):
        raise TypeError(f"last_backend: op must be an op's name (str) or None, got {op!r}")
    if op not in _op_names and op not in _last_used:
        public = importlib.import_module("masksub_kernels").__all__  # not the internal ops (scatter_tokens, backwards)
        ops = ", ".join(sorted(name for name in _op_names if name in public))
        raise ValueError(
            f"last_backend: no op is named {op!r}; the ops: {ops} (the public functions of masksub_kernels)"
        )
    return _last_used.get(op)
