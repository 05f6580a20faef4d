"""Which path the fused-linear loss takes where it must not synchronise with the host (torch.compile, CUDA graph
capture): probability targets the gradients-in-forward op with the count on the device, class ids the recompute op;
the values and gradients as the composite's."""

import pytest
import torch
from conftest import DEVICE
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures op_backend and _small_tiles, autouse)
    F32,
    GRAD_RTOL,
    OP_BACKENDS,
    Calls,
    _small_tiles,
    assert_grad_close,
    composite,
    leaves,
    make_inputs,
    op_backend,
)

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops._linear_loss_grads import _linear_loss_grads_op

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


def test_torch_compile_takes_the_grads_op_for_probabilities(monkeypatch, op_backend):  # noqa: F811
    # Compiled, probability targets (every row counts) take the grads-in-forward op without its host sync (the count
    # on the device; counted_rows, the host read, made to fail here); class ids take the recompute op, which computes
    # the counted rows only without a sync. .loss's gradients as the composite's in both
    def host_count(*_):
        raise AssertionError("the host count under torch.compile")

    monkeypatch.setattr(chunks, "counted_rows", host_count)
    calls = Calls(monkeypatch)
    for kind, expected_calls in (("dense", (1, 0)), ("index_ignore", (1, 1))):
        h, hs, w, b, target = make_inputs(kind=kind)
        ours = leaves(h, hs, w, b)
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda *x, y=target: mk.linear_masksub_loss(*x, y).loss, fullgraph=True, backend="aot_eager"
        )
        compiled(*ours).backward()
        assert (calls.grads, calls.recompute) == expected_calls, kind
        expected, ref_leaves = composite(h, hs, w, b, target)
        expected.loss.backward()
        for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
            assert_grad_close(a.grad, e.grad, GRAD_RTOL[F32], f"{name} ({kind})")


def test_torch_compile_per_row_losses_of_probabilities_take_the_chunk_loop(monkeypatch, op_backend):  # noqa: F811
    # reduction='none' under torch.compile runs the recompute op; its backward on probabilities (every row counts:
    # no count to read) takes the chunk loop's cuBLAS matmuls over every row, with no host read, on the Triton
    # backend (its own kernels, ~4x slower on an H200, stay for class ids there, which they skip on the device).
    # Per-row grads that differ: the composite's gradients
    from masksub_kernels.ops import linear_masksub_loss as lm

    def host_count(*_):
        raise AssertionError("the host count under torch.compile")

    monkeypatch.setattr(chunks, "counted_rows", host_count)
    seen, real = [], chunks.backward_in_chunks
    monkeypatch.setattr(lm, "backward_in_chunks", lambda *a: seen.append(a[-2]) or real(*a))
    for kind, loop in (("dense", [False]), ("index_ignore", [])):
        seen.clear()
        h, hs, w, b, target = make_inputs(kind=kind)
        g = torch.linspace(0.5, 1.5, h.shape[0], device=DEVICE)
        ours = leaves(h, hs, w, b)
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda *x, y=target, g=g: (mk.linear_masksub_loss(*x, y, reduction="none").loss * g).sum(),
            fullgraph=True,
            backend="aot_eager",
        )
        compiled(*ours).backward()
        assert seen == (loop if op_backend == "triton" else []), kind
        expected, ref_leaves = composite(h, hs, w, b, target, reduction="none")
        (expected.loss * g.double()).sum().backward()
        for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
            assert_grad_close(a.grad, e.grad, GRAD_RTOL[F32], f"{name} ({kind})")


@pytest.mark.skipif(DEVICE.type != "cuda" or "triton" not in OP_BACKENDS, reason="needs a CUDA device")
def test_cuda_graph_capture_takes_the_grads_op_for_probabilities(monkeypatch):
    # Captured, the public op with probability targets computes its gradients in the forward over every row with
    # the count on the device (a host read would fail the capture), and the grads op itself replays: each replay on
    # new inputs equals an eager call of the same path, its stored gradients included
    rows, depth, classes = 64, 32, 1000
    h, hs, w, b, target = (t.detach() for t in make_inputs(rows, depth, classes, kind="dense"))
    inputs = [t.requires_grad_(True) for t in (h.clone(), hs.clone(), w.clone(), b.clone())]
    options = (False, 0.1, 0, 1.0, None)  # bce, label_smoothing, ignore_index, temperature, threshold
    # mean, weights, need_* (hidden, sub_hidden, weight, bias), gather, private, chunk_rows 0
    args = (True, 0.5, 0.5, True, True, True, True, False, False, 0, *options)

    def public():
        return mk.linear_masksub_loss(*inputs, target, label_smoothing=0.1, ignore_index=0).loss

    def grads_op():
        return _linear_loss_grads_op(*(t.detach() for t in inputs), target, *args)

    calls = Calls(monkeypatch)
    with mk.use_backend("triton"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up of the path the capture takes: kernels compile outside it
            grads_op()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured_loss = public()
            captured = grads_op()
        assert (calls.grads, calls.recompute) == (1, 0)
        for seed in (1, 2):
            new = make_inputs(rows, depth, classes, kind="dense", seed=seed)
            with torch.no_grad():
                for old, value in zip((*inputs, target), new):
                    old.copy_(value)
            graph.replay()
            eager = grads_op()
            for i, (a, e) in enumerate(zip(captured, eager)):
                torch.testing.assert_close(a, e, rtol=1e-6, atol=0, msg=f"output {i}")
            torch.testing.assert_close(captured_loss, eager[0], rtol=1e-6, atol=0)


@pytest.mark.skipif(DEVICE.type != "cuda" or "triton" not in OP_BACKENDS, reason="needs a CUDA device")
def test_cuda_graph_capture_of_the_recompute_backward_on_probabilities(monkeypatch):
    # Captured, the recompute op's backward (reduction='none') on probabilities runs the chunk loop over every row
    # (gather False: a host read would fail the capture); each replay on new inputs equals an eager call
    from masksub_kernels.ops import linear_masksub_loss as lm

    seen, real = [], chunks.backward_in_chunks
    monkeypatch.setattr(lm, "backward_in_chunks", lambda *a: seen.append(a[-2]) or real(*a))

    rows, depth, classes = 64, 32, 1000
    h, hs, w, b, target = (t.detach().clone() for t in make_inputs(rows, depth, classes, kind="dense"))
    options = (False, 0.1, -100, 2.0, None)  # bce, label_smoothing, ignore_index, temperature, threshold
    g = torch.linspace(0.5, 1.5, rows, device=DEVICE)
    with mk.use_backend("triton"):
        out = lm._linear_loss_op(h, hs, w, b, target, *options)

        def backward():
            return lm._linear_loss_backward_op(
                g, -g.flip(0), out, h, hs, w, b, target, True, True, True, False, *options
            )

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: kernels compile and the matmul helpers probe outside the capture
            backward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = backward()
        assert seen == [False, False]  # the warm-up's and the capture's: the chunk loop, without its host read
        for seed in (1, 2):
            new = make_inputs(rows, depth, classes, kind="dense", seed=seed)
            with torch.no_grad():
                for old, value in zip((h, hs, w, b, target), new):
                    old.copy_(value)
                out.copy_(lm._linear_loss_op(h, hs, w, b, target, *options))
            graph.replay()
            eager = backward()
            for i, (a, e) in enumerate(zip(captured, eager)):
                torch.testing.assert_close(a, e, rtol=1e-6, atol=0, msg=f"gradient {i}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("params", [(True, True), (False, True), (True, False)])  # need_weight, need_bias
@pytest.mark.triton
def test_the_grads_ops_outputs_do_not_depend_on_the_backend(dtype, bias, params):
    # A graph compiled under one backend may run under another (set_backend between calls; Inductor's on-disk cache
    # shared by processes): the fake cannot know which, so every backend's outputs must have the fake's dtypes,
    # sizes and strides (fp64 dW was fp32 on Triton, bf16 dW a padded view on Triton only: compiled under torch,
    # the Triton run failed Inductor's stride assertion)
    h, hs, w, b, target = make_inputs(kind="dense", bias=bias)
    h, hs, w = (t.to(dtype) for t in (h, hs, w))
    b = None if b is None else b.to(dtype)
    options = (False, 0.0, -100, 1.0, None)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, *params, False, False, 0, *options)

    def layout(outputs):
        return [(t.dtype, tuple(t.shape), t.stride()) for t in outputs]

    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = layout(_linear_loss_grads_op.custom_op(*(mode.from_tensor(a) if torch.is_tensor(a) else a
                                                              for a in args)))  # fmt: skip
    for backend in OP_BACKENDS:
        with mk.use_backend(backend):
            assert layout(_linear_loss_grads_op.run(*args)) == fake, backend


@pytest.mark.parametrize("kind", ["dense", "index_ignore"])
@pytest.mark.parametrize(("single", "trained"), [(False, "hs"), (False, "w"), (False, "hwb"), (True, "hw")])
def test_torch_compile_with_some_inputs_frozen(op_backend, kind, single, trained):  # noqa: F811
    # A frozen head (only the hidden states h, s trained), a trained head on frozen features, an LM head without a
    # bias: the ops' unused gradient outputs are [0] tensors, each its own (outputs of a custom op may not alias one
    # another under torch.compile: one shared [0] failed every such call, where eager calls passed)
    h, hs, w, b, target = make_inputs(kind=kind, bias=not single)
    ours = [None if t is None else t.requires_grad_(name in trained) for t, name in zip(leaves(h, hs, w, b), "hswb")]

    def call(h, hs, w, b):
        if single:
            return mk.linear_soft_target_cross_entropy(h, w, b, target)
        return mk.linear_masksub_loss(h, hs, w, b, target).loss

    torch._dynamo.reset()
    torch.compile(call, fullgraph=True, backend="aot_eager")(*ours).backward()
    expected, ref_leaves = composite(h, hs, w, b, target, single=single)
    (expected if single else expected.loss).backward()
    for name, ref in zip("hwb" if single else "hswb", ref_leaves):
        if name in trained:
            assert_grad_close(ours["hswb".index(name)].grad, ref.grad, GRAD_RTOL[F32], f"d {name} ({kind})")


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["index", "index_ignore", "dense", "bad_id"])
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16])
@pytest.mark.parametrize("terms", ["both", "main", "sub"])
# need_hidden, need_weight, need_bias: the bias alone (a frozen W) and the weight alone (a frozen bias) too
@pytest.mark.parametrize(
    "need", [(True, True, True), (True, False, False), (False, True, True), (False, False, True), (False, True, False)]
)
def test_recompute_backward_routes_agree_with_the_reference(monkeypatch, kind, dtype, terms, need):
    # The recompute op's backward (reduction='none', each term's own backward) on the Triton backend: the chunk
    # loop's cuBLAS matmuls where it may read the count (gather, eager) or has none to read (probabilities), else its
    # own kernels (class ids under torch.compile / CUDA graphs); per-row grads that differ, ignored rows, a class id
    # equal to C (a NaN row), one term without a grad, either gradient not asked for: the reference's, each route
    from masksub_kernels.ops import linear_masksub_loss as lm

    monkeypatch.setattr(chunks, "GRADS_CHUNK_BYTES", 2 * 8 * chunks.aligned_classes(40) * 4)  # chunks of 8 rows
    monkeypatch.setattr(chunks, "GRADS_CHUNK_MIN_ROWS", 8)
    h, hs, w, b, target = make_inputs(rows=37, dtype=dtype, kind="index_ignore" if kind == "bad_id" else kind, seed=11)
    if kind == "bad_id":
        target[4] = w.shape[0]  # out of range: its row's gradients NaN, on every backend
    options = (False, 0.1, -100, 2.0, None)
    with mk.use_backend("torch"):
        out = lm._linear_loss_op(h, hs, w, b, target, *options)
    g = torch.linspace(0.5, 1.5, h.shape[0], device=DEVICE)
    gm, gs = (g if terms != "sub" else None), (-g.flip(0) if terms != "main" else None)
    args = (gm, gs, out, h, hs, w, b, target, *need)
    with mk.use_backend("torch"):
        expected = lm._linear_loss_backward_op(*args, True, *options)
    chunked = []
    real = chunks.backward_in_chunks
    monkeypatch.setattr(lm, "backward_in_chunks", lambda *a: chunked.append(a[-2]) or real(*a))
    for gather in (True, False):
        chunked.clear()
        with mk.use_backend("triton"):
            got = lm._linear_loss_backward_op(*args, gather, *options)
        # the route taken: the loop in eager mode, and for probabilities (no count to read) under compile too
        assert chunked == ([gather] if gather or kind == "dense" else []), gather
        for name, a, e in zip(("d hidden", "d sub_hidden", "d weight", "d bias"), got, expected):
            assert a.shape == e.shape and a.dtype == e.dtype, (name, gather)
            if e.numel():
                assert torch.equal(a.isnan(), e.isnan()), (name, gather)
                finite = ~e.isnan()
                assert_grad_close(a[finite], e[finite], 2e-2 if dtype != F32 else 1e-4, f"{name}, gather {gather}")


@pytest.mark.triton
def test_eager_recompute_backwards_take_the_chunk_loop(monkeypatch):
    # In eager mode, reduction='none''s backward and a reduced call's own .main backward (the recompute op's backward)
    # run the chunk loop on the counted rows (gather: a host sync may read the count); under torch.compile the
    # recompute kernels (the compile test above, with a failing host count)
    from masksub_kernels.ops import linear_masksub_loss as lm

    seen, real = [], chunks.backward_in_chunks
    monkeypatch.setattr(lm, "backward_in_chunks", lambda *a: seen.append(a[-2]) or real(*a))
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=3)
    with mk.use_backend("triton"):
        out = mk.linear_masksub_loss(*leaves(h, hs, w, b), target, reduction="none")
        (out.loss * torch.linspace(0.5, 1.5, h.shape[0], device=DEVICE)).sum().backward()
        assert seen == [True]
        mk.linear_masksub_loss(*leaves(h, hs, w, b), target).main.backward()
        assert seen == [True, True]


def test_capture_safe_runs_the_capture_path_eagerly(monkeypatch, op_backend):  # noqa: F811
    # helper-244: under CUDA graph capture, class ids take the recompute op and its own backward kernels, which an
    # eager call never launches, so an eager warm-up would not load them (a Triton kernel loads its module at its
    # first launch; global-mode capture forbids that). Inside mk.capture_safe() an eager call takes that path: the
    # recompute op forward, its backward without the chunk loop's gather (the host read of the count)
    from masksub_kernels.ops import linear_masksub_loss as lm

    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=5)
    (loss64, *_), leaves64 = composite(h, hs, w, b, target)
    loss64.backward()
    gathers, op = [], lm._linear_loss_backward_op
    real = op.from_backward  # (the autograd backward's entry: MaskSubOp.from_backward)
    monkeypatch.setattr(op, "from_backward", lambda *a: gathers.append(a[11]) or real(*a))
    calls = Calls(monkeypatch)
    inputs = leaves(h, hs, w, b)
    with mk.capture_safe():
        assert chunks.sync_free(h)
        out = mk.linear_masksub_loss(*inputs, target)
        out.loss.backward()
    assert (calls.grads, calls.recompute, gathers) == (0, 1, [False])
    torch.testing.assert_close(out.loss.double(), loss64.detach().double(), rtol=1e-5, atol=0)
    for name, a, e in zip(("h", "h_s", "W", "b"), inputs, leaves64):
        assert_grad_close(a.grad, e.grad, GRAD_RTOL[F32], name)
    # outside it, the eager path again (the gradients in the forward); the block is left on an error too
    assert not chunks.sync_free(h)
    mk.linear_masksub_loss(*leaves(h, hs, w, b), target).loss.backward()
    assert (calls.grads, calls.recompute) == (1, 1)
    with pytest.raises(RuntimeError, match="inside"), mk.capture_safe(), mk.capture_safe():
        raise RuntimeError("inside")
    assert not chunks.sync_free(h)


@pytest.mark.skipif(DEVICE.type != "cuda" or "triton" not in OP_BACKENDS, reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["index_ignore", "dense"])
@pytest.mark.parametrize("single", [False, True])
def test_cuda_graph_capture_after_a_capture_safe_warm_up(kind, single):
    # The recipe of docs/api.md: warm up inside mk.capture_safe() on a side stream (it loads the kernels the capture
    # launches: the recompute op's for class ids, the count on the device for probabilities), capture the public
    # op's step, replay on new inputs (other rows ignored each time: the count changes on the device): each replay
    # equals an eager call of the same path
    rows, depth, classes = 64, 32, 1000
    h, hs, w, b, target = (t.detach() for t in make_inputs(rows, depth, classes, kind=kind))
    inputs = [t.requires_grad_(True) for t in (h.clone(), hs.clone(), w.clone(), b.clone())]

    def step():
        for t in inputs:
            t.grad = None
        if single:
            loss = mk.linear_soft_target_cross_entropy(inputs[0], inputs[2], inputs[3], target)
        else:
            loss = mk.linear_masksub_loss(*inputs, target).loss
        loss.backward()
        return loss.detach(), [t.grad for t in inputs if t.grad is not None]

    with mk.use_backend("triton"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), mk.capture_safe():
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured_loss, captured_grads = step()
        for seed in (1, 2):
            new = make_inputs(rows, depth, classes, kind=kind, seed=seed)
            if kind == "index_ignore":
                new[4][seed::2] = -100  # other rows ignored than the capture's (its [::3])
            with torch.no_grad():
                for old, value in zip((*inputs, target), new):
                    old.copy_(value)
            graph.replay()
            loss, grads = captured_loss.clone(), [g.clone() for g in captured_grads]
            with mk.capture_safe():
                eager_loss, eager_grads = step()
            torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
            assert len(grads) == len(eager_grads) == (3 if single else 4)
            for a, e in zip(grads, eager_grads):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


# helper-250's mutation audit (the mutant named in the comment)
# kills _linear_loss_chunks.py sync_free's order swapped, `_capture_safe_depth > 0 or torch.compiler.is_compiling()`
# (M29): dynamo then reads the depth while tracing and guards on it, and a compiled call inside mk.capture_safe()
# recompiles (helper-247)
def test_capture_safe_does_not_recompile_a_compiled_caller():

    compiles = []

    def backend(graph, example_inputs):
        compiles.append(graph)
        return graph.forward

    torch._dynamo.reset()
    step = torch.compile(lambda x: x * 2 if chunks.sync_free(x) else x, backend=backend)
    x = torch.ones(3, device=DEVICE)
    assert torch.equal(step(x), x * 2)  # traced: sync-free
    with mk.capture_safe():
        assert torch.equal(step(x), x * 2)
    assert len(compiles) == 1
