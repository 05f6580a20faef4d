"""Pieces every op file shares: accepted dtypes, the selection limits and checks, launch helpers, the extension."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _backend

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Classes of the loss ops: a row's column positions (a block's start plus its lanes) are int32 in the kernels, the
# row offsets int64; far beyond any vocabulary, refused alike by every backend
MAX_CLASSES = 2**31 - 2**16
INDEX_DTYPES = (torch.int64, torch.int32)
MAX_TOKENS = 8192  # one sort per sample in one program (8192 int64 keys, 32 warps); a ViT-H at 448 px has 1024
FP32_MAX = torch.finfo(torch.float32).max


def check_int(name: str, value) -> int:
    """An integer argument (a Python or NumPy integer, not a bool), as a Python int."""
    # torch.compile's dynamo specialises a SymInt (and strict torch.export guards it); a non-strict export's tracing
    # counts as compiling but has no dynamo: it gets this message too
    if isinstance(value, torch.SymInt) and not torch.compiler.is_dynamo_compiling():
        raise TypeError(
            f"{name} is a symbolic size ({value}): the ops take static sizes; trace them with static shapes (make_fx "
            "with tracing_mode 'real' or 'fake', torch.export without dynamic_shapes for this size), or with "
            "torch.export(..., strict=True), whose dynamo specialises what the ops need"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_real(name: str, value, low: float, high: float = FP32_MAX, *, open_high=False, expected=None) -> float:
    """A real-number option (a Python or NumPy int or float, not a bool nor a tensor) as a float in [low, high] (or
    [low, high)), finite: the losses' and MaskSub's. The kernels take it in fp32, so ``high`` is at most fp32's
    largest finite value. ``expected`` words the interval in the error message. (check_int is the integers': a size
    or count, kept exact, whose range its callers check against the sizes it relates to.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond the float range
        x = math.inf
    finite = x - x == 0  # math.isfinite(x), traceable where x is a SymFloat (torch.compile(dynamic=True))
    if not (finite and low <= x and (x < high if open_high else x <= high)):
        expected = expected or f"in [{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return x


def check_keep_args(
    batch_size: int, num_tokens: int, num_keep: int, positions: str = "num_tokens"
) -> tuple[int, int, int]:
    """Sizes of a per-sample selection of ``num_keep`` of ``num_tokens`` positions (tokens or grid cells), returned
    as Python ints. ``positions``: how the message names their count ('num_cells' for the grid masks, as the CUDA
    extension's own check does)."""
    batch_size, num_tokens, num_keep = (
        check_int(name, value)
        for name, value in (("batch_size", batch_size), (positions, num_tokens), ("num_keep", num_keep))
    )
    if not 0 <= batch_size < 2**31:  # one program per sample: a GPU grid's x axis (the cuda binding's bound too)
        raise ValueError(f"batch_size must be in [0, 2**31), got {batch_size}")
    if not 1 <= num_tokens <= MAX_TOKENS:
        raise ValueError(f"{positions} must be in [1, {MAX_TOKENS}], got {num_tokens}")
    if not 1 <= num_keep <= num_tokens:
        raise ValueError(f"num_keep must be in [1, {positions}={num_tokens}], got {num_keep}")
    return batch_size, num_tokens, num_keep


def check_float_tensor(name: str, x, layout: str, dims: int) -> None:
    """``x`` a floating-point tensor of ``dims`` dimensions (``layout`` names them in the error)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims:
        raise ValueError(f"{name} must be {layout} ({dims}-D), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


def check_bool(name: str, value) -> bool:
    """A flag argument: a bool (a string such as "no" would otherwise count as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def resolve_device(device, seed) -> torch.device:
    """The device of a mask-drawing op: ``device``, else the seed tensor's, else torch's default device; checked
    (a CUDA device on a machine without one is a clear error)."""
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.empty(0).device
    return _backend.check_device(device)


def sort_warps(block: int) -> int:
    """Warps for a one-program sort of ``block`` keys: ~8 keys per thread keeps the bitonic network small (compile
    time grows steeply with keys per thread: 4096 keys on 4 warps took minutes to compile, on 16 warps 7 s)."""
    return max(4, min(32, block // 256))


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids."""
    return -(-a // b)


class MaskSubOp:
    """An op of this library: its implementations, chosen per call by the backend; a ``torch.library`` custom op
    for torch.compile, a direct call in eager mode.

    ``implementations`` maps each backend to a function taking the op's arguments; the ``cuda`` one takes the
    extension that serves the tensors' device first (``_backend.extension``). The backend comes from
    ``_backend.resolve_backend`` (the one place that decides, checks and records it) on the device of the argument
    ``device_arg`` (a tensor or a torch.device). Meta tensors run the registered fake on every backend.

    Through the dispatcher a custom op with autograd costs ~70 us of Python per call (measured on the CPU), more than
    the kernels take at ViT sizes. So in eager mode the op runs its implementation directly, inside an
    ``autograd.Function`` when an input needs a gradient, with the very setup_context / backward registered on the
    custom op. While torch.compile traces (dynamo, and AOTAutograd tracing the backward formulas), the custom op is
    called instead, so compiled graphs keep one opaque node per op and never break.

    ``torch_eager`` (optional): what the ``torch`` backend runs in eager mode instead of the ``torch``
    implementation and the registered backward: a function of the op's arguments that returns the op's output and
    does its own autograd (e.g. a lean ``autograd.Function`` that saves what its backward needs instead of
    recomputing it, the CPU speed path). The traced op (torch.compile) and the other backends are unchanged.

    Implementations run with autocast off for their device (``_autocast_off``): an op computes under autocast what
    it computes outside it for the same inputs. Otherwise the torch ops inside an implementation would be autocast
    too (the direct call, and a custom op's implementation, see the caller's autocast state): the fused-linear
    loss's reference matmuls, documented fp32, ran in bf16 under bf16 autocast, and on CUDA its fp32 dW
    accumulation then met bf16 and fp32 operands (a RuntimeError; ``masksub-train-mlm --amp bf16`` with the torch
    backend on a GPU). Callers cast the inputs to the precision they want (the fused-linear pair's public functions
    cast the head's operands as F.linear's under autocast would be).

    ``check`` (optional): a function of the op's arguments run before any backend (metadata only, no value read):
    the sizes its kernels rely on, for a direct ``torch.ops.masksub`` call whose arguments no public function
    checked (else Triton writes past ids where the cuda binding refuses); every backend then refuses alike.
    """

    def __init__(
        self,
        name: str,
        schema,
        device_arg: str,
        implementations: dict,
        records: tuple[str, ...],
        torch_eager=None,
        check=None,
    ):
        parameters = list(inspect.signature(schema).parameters)
        if not callable(implementations["torch"]) or not all(
            f is None or callable(f) for f in implementations.values()
        ):
            raise TypeError(f"op {name}: the torch implementation is required, the others are functions or None")
        self.name = name
        self.records = records
        # the refusals' name for the op: the public function it serves first, and its own (so that a call of
        # masksub_loss is named masksub_loss on every backend, not masksub_loss_reduced on one of them)
        self.label = f"{records[0]} (op masksub::{name})" if records else f"masksub::{name}"
        self._device_index = parameters.index(device_arg)
        self._implementations = implementations
        self._implemented = tuple(backend for backend, f in implementations.items() if f is not None)
        _backend.register_op_names(records, self._implemented)
        self._fake = None
        self._function = None
        self._torch_eager = torch_eager
        self._check = check
        implementation = functools.update_wrapper(lambda *args: self.run(*args), schema)
        self.custom_op = torch.library.custom_op(f"masksub::{name}", implementation, mutates_args=())

    def _device(self, args) -> torch.device:
        device = args[self._device_index]
        return device.device if isinstance(device, torch.Tensor) else device

    def run(self, *args):
        """The op on the backend that resolve_backend chooses for the device of its tensors, after its ``check``."""
        if self._check is not None:
            self._check(*args)
        return self._run_unchecked(args)

    def from_backward(self, *args):
        """The op as a registered autograd backward calls it: on what its own forward made and saved (checked when
        that forward ran) and the gradients autograd has matched to the forward's outputs (shape, dtype, device).
        As ``__call__``, without ``check`` in eager mode (10-16 us of Python per backward on the tests' 2-core Xeon);
        a tracer, torch.compile or a torch.func transform gets ``__call__``'s route (the custom op, checked there on
        its fake tensors or when the compiled code runs). An open forward-AD level too: __call__ refuses a dual
        upstream gradient, whose tangent the kernels would drop (a silent zero jvp of the vjp)."""
        plain = self._torch_eager is None and self._function is None  # (a backward op: neither)
        if not plain or torch.autograd.forward_ad._current_level >= 0 or torch.compiler.is_compiling():
            return self(*args)
        if _tracing(args) or torch._C._are_functorch_transforms_active():
            return self(*args)
        return self._run_unchecked(args)

    def _run_unchecked(self, args):
        device = self._device(args)
        if device.type == "meta" and self._fake is not None:
            return self._fake(*args)
        backend = _backend.resolve_backend(device, self.records, implemented=self._implemented)
        with _autocast_off(device.type):
            return self._call(backend, device, args)

    def _call(self, backend: str, device: torch.device, args):
        if backend == "cuda":
            return self._implementations["cuda"](_backend.extension(device.type), *args)
        if backend == "triton" and device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
            with torch.cuda.device(device):  # Triton launches on the current device and stream, not the tensors'
                return self._implementations["triton"](*args)
        return self._implementations[backend](*args)

    @property
    def implemented(self) -> tuple[str, ...]:
        """The backends this op has."""
        return self._implemented

    def report_as(self, name: str, tensor: torch.Tensor) -> None:
        """Resolve (check and record) the backend this op takes on ``tensor``'s device under ``name``: a public
        function that shares the op with others (the single-branch losses), so that ``last_backend(name)`` says what
        its own last call ran with and a backend the op lacks is refused naming it. ``name`` must be registered
        (``_backend.register_op_names``). Nothing where the op's own call resolves no backend either (__call__): meta
        tensors, torch.compile and other tracers (fake tensors; compiled code records the op's own names only, when
        it runs). torch.func transforms are refused here, naming the function called (the op would name itself)."""
        if tensor.device.type == "meta" or torch.compiler.is_compiling() or _tracing((tensor,)):
            return
        if torch._C._are_functorch_transforms_active():
            _refuse_func_transforms(name)
        _backend.resolve_backend(tensor.device, name, implemented=self._implemented)

    def register_fake(self, fake):
        self._fake = fake
        check = self._check

        @functools.wraps(fake)
        def checked_fake(*args):
            # a direct torch.ops.masksub call with an operand on the meta device reaches the fake, not run(): the
            # same check first. Not for a tracer's fake tensors (sizes that may be symbolic): the
            # compiled code's call runs the check when it runs
            if check is not None and not _tracing(args):
                check(*args)
            return fake(*args)

        self.custom_op.register_fake(checked_fake)
        return fake

    def register_autograd(self, backward, *, setup_context, differentiable: bool = False, called=None) -> None:
        """``backward`` and ``setup_context`` as torch.library's. ``differentiable``: the backward is built from
        differentiable ops (its gradients can be differentiated again); else it is first-order only, and a backward
        with create_graph=True raises (first_order_only). ``called`` (an op that serves several public functions):
        a function of the backward's ctx that gives the public function whose call made it, for that refusal."""
        if not differentiable:
            name = self.label if called is None else lambda ctx: f"{called(ctx)} (op masksub::{self.name})"
            backward = first_order_only(name, backward)
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        run = self.run

        # The ctx-style forward, not a forward with a separate setup_context: torch binds the latter's arguments
        # through inspect.signature on every call (16 us of Python more per call on the tests' 2-core Xeon)
        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = run(*args)
                setup_context(ctx, args, output)
                return output

            @staticmethod
            def backward(ctx, *grads):
                # as the forward: a backward called inside the caller's autocast (CPU: the calling thread) runs
                # without it
                device = next((g.device.type for g in grads if isinstance(g, torch.Tensor)), "cpu")
                with _autocast_off(device):
                    return backward(ctx, *grads)

        self._function = Function

    def __call__(self, *args):
        if torch.autograd.forward_ad._current_level >= 0:  # a dual level is open (-1: none; no cost otherwise)
            _refuse_forward_ad(self.label, args)
        if torch.compiler.is_compiling() or _tracing(args):
            return self.custom_op(*args)
        if torch._C._are_functorch_transforms_active():  # torch.func.grad, vmap, jvp, jacrev...
            _refuse_func_transforms(self.label)
        # no ``check`` on this route (nor ahead of _function, whose forward calls run(), which checks): __call__ is
        # the public functions' entry, after their own checks; a direct torch.ops.masksub call enters through run()
        if self._torch_eager is not None:
            device = self._device(args)
            if device.type != "meta" and _backend.resolve_backend(device, self.records, self._implemented) == "torch":
                with _autocast_off(device.type):
                    return self._torch_eager(*args)
        if self._function is not None and torch.is_grad_enabled():
            if any(isinstance(arg, torch.Tensor) and arg.requires_grad for arg in args):
                return self._function.apply(*args)
        return self.run(*args)


def _refuse_forward_ad(name: str, args) -> None:
    """Forward-mode AD (``torch.autograd.forward_ad`` dual tensors) is refused on every backend: the kernels would
    drop the tangent (a zero jvp, silently) and the eager autograd.Function has no jvp."""
    from torch.autograd import forward_ad

    if any(isinstance(arg, torch.Tensor) and forward_ad.unpack_dual(arg).tangent is not None for arg in args):
        raise RuntimeError(
            f"{name} does not support forward-mode AD (torch.autograd.forward_ad dual tensors): the kernels "
            "have no jvp; take gradients with torch.autograd (.backward(), torch.autograd.grad), or a jvp with "
            "torch.autograd.functional.jvp (built on double backward: the token and grid ops have it)"
        )


def first_order_only(name, backward):
    """``backward`` (ctx, *grads) -> gradients, for a backward that is not itself differentiable (kernels, or torch
    ops on detached values). Under create_graph=True (grad mode on in the backward) its gradients would silently be
    constants: a gradient penalty, a Hessian-vector product or a jvp through them would be zero. So it refuses:
    a RuntimeError naming the op. (Marking the gradients instead, as torch's once_differentiable does, is not
    enough: autograd.grad(..., inputs) and functional.hvp only run the nodes that lead to the inputs asked for, so
    a marker with no edge to them never runs, and they return None or zeros.) ``name``: the op's name in that
    error, or a function of ctx that gives it (an op shared by several public functions names the one called, from
    what its forward saved: no value read)."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        # a dual upstream gradient (forward-mode AD over this backward): refused on every backend, as the kernels'
        # backward ops refuse it (the torch backend's eager reduced loss read it with .tolist(): a silent zero
        # tangent; helper-347)
        if torch.autograd.forward_ad._current_level >= 0:
            _refuse_forward_ad(name(ctx) if callable(name) else name, grads)
        # under make_fx / AOTAutograd too (their backward runs with grad mode off unless create_graph=True): the
        # trace would hold a constant gradient, and a second grad through it met torch's "no autograd formula"
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            label = name(ctx) if callable(name) else name
            raise RuntimeError(
                f"{label}: double backward is not supported (create_graph=True: its backward is not differentiable, "
                "so the gradient's own gradient would be wrong); differentiate the plain PyTorch composite instead"
            )
        return backward(ctx, *grads)

    return wrapped


def _autocast_off(device_type: str):
    """autocast disabled for ``device_type`` where it is on (MaskSubOp), else nothing to enter (no cost per call)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _refuse_func_transforms(label: str):
    raise RuntimeError(
        f"{label} does not support torch.func transforms (grad, vmap, jvp, jacrev, ...): take its gradients with "
        "torch.autograd (.backward(), torch.autograd.grad)"
    )


def _tracing(args) -> bool:
    """Whether something other than torch.compile traces this call (make_fx / AOTAutograd's dispatch modes, fake or
    other tensor subclasses): the custom op then runs, so that the tracer sees one opaque node and its registered
    fake and autograd, never a kernel launched on a tensor without data. torch.func transforms are refused with an
    error (MaskSubOp.__call__): the ops have no vmap or jvp rules, and their eager autograd.Function takes ctx in its
    forward, which functorch does not accept."""
    if _get_current_dispatch_mode() is not None or get_proxy_mode() is not None:
        return True
    return any(isinstance(arg, torch.Tensor) and type(arg) not in _PLAIN_TENSORS for arg in args)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def values_readable(tensors) -> bool:
    """Whether an eager check may read these CPU tensors' values on the host (the ops' default validations): not
    while torch.compile, make_fx, AOTAutograd or torch.export traces the call (their proxy, fake and functional
    dispatch modes, pre-dispatch's proxy mode, tensors with a Python dispatch key: the values are to come, and the op
    is traced as one node), nor inside a torch.func transform (the op refuses it with its own clear error, which
    reading the values would come before). A user's own dispatch mode (FlopCounterMode, selective checkpointing) and
    a plain Tensor subclass run on real values: read (_tracing, which picks the op's route, counts every
    dispatch mode)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if get_proxy_mode() is not None or any(torch._C._get_dispatch_mode(key) is not None for key in _TRACER_MODES):
        return False
    # a tensor whose ops go to a Python __torch_dispatch__ (fake, functional, DTensor, a wrapper subclass); a plain
    # Python subclass (no __torch_dispatch__) or an nn.Parameter holds its values
    return not any(isinstance(t, torch.Tensor) and torch._C._dispatch_keys(t).has(_PYTHON_KEY) for t in tensors)


_PYTHON_KEY = torch._C.DispatchKey.Python


# the dispatch modes of make_fx / AOTAutograd / torch.export (infra modes); a user's mode (FlopCounterMode, DebugMode,
# selective checkpointing's caching modes) runs on real tensors whose values can be read
_TRACER_MODES = (
    torch._C._TorchDispatchModeKey.PROXY,
    torch._C._TorchDispatchModeKey.FAKE,
    torch._C._TorchDispatchModeKey.FUNCTIONAL,
)


def masksub_op(
    name: str, *, device: str, torch, triton, cuda, records: tuple[str, ...] | None = None, torch_eager=None, check=None
):
    """Decorator over a signature (its body unused): ``@masksub_op("gather_tokens", device="x", torch=...,
    triton=..., cuda=...)`` makes the op ``masksub::gather_tokens`` with those implementations (None: the backend
    does not have it; ``auto`` then skips it). ``records``: the names under which ``last_backend`` reports it
    (default: ``name``; ops that serve several public functions report under all of them). ``torch_eager``: the
    torch backend's eager-mode implementation with its own autograd, where it has one; ``check``: the op's own
    metadata checks, run before any backend (MaskSubOp)."""
    implementations = {"torch": torch, "triton": triton, "cuda": cuda}
    return lambda schema: MaskSubOp(name, schema, device, implementations, records or (name,), torch_eager, check)
