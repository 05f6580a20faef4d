"""The compile tool's own logic and the kernel specs' faithfulness to the launches (helper-200)."""

import pytest

pytest.importorskip("triton")

from test_compile_kernels import _json_from_script


# kills C01 (sm_90's limit 233472: the SM's 228 KiB, not a block's 227 KiB) and C02 (sm_80 held to 8.0's 163 KiB)
def test_shared_memory_limits_are_the_cards_opt_in_maxima():
    # the most shared memory one block may opt into (CUDA C++ Programming Guide, per compute capability): 8.6 and
    # 8.9's 99 KiB (sm_80's compile held to them; 8.0 itself allows 163 KiB), 9.0's 227 KiB.
    # test_shared_memory_over_the_cards_limit_fails sets the limits itself, so no other test reads these figures
    from tools import compile_kernels

    assert compile_kernels.SHARED_LIMIT == {80: 99 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


# kills C06 (no divisibility attributes), C07 (attributes at the wrong parameter) and C17 (the spec's own options
# popped: its second arch compiled without the hints)
def test_compile_one_hints_the_named_parameters_for_every_arch(monkeypatch):
    import triton

    from tools import compile_kernels

    seen = []

    class Compiled(Exception):
        pass

    def ast_source(fn, signature, constexprs, attrs):
        return {"signature": signature, "constexprs": constexprs, "attrs": attrs}

    def compile(source, target, options):  # triton.compile's stand-in
        seen.append((target.arch, source, options))
        raise Compiled

    monkeypatch.setattr(triton.compiler, "ASTSource", ast_source)
    monkeypatch.setattr(triton, "compile", compile)
    kernel = type("Kernel", (), {"arg_names": ["x_ptr", "y_ptr", "n", "BLOCK"]})()
    options = {"num_warps": 8, "divisible_by_16": ["y_ptr", "n"]}
    for arch in (80, 90):
        with pytest.raises(Compiled):
            compile_kernels.compile_one(kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"}, {"BLOCK": 64},
                                        options, arch)  # fmt: skip
    hints = {(1,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}
    for arch, (seen_arch, source, passed) in zip((80, 90), seen):
        assert seen_arch == arch and source["attrs"] == hints, arch
        assert source["signature"] == {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
        assert passed["num_warps"] == 8
    assert options == {"num_warps": 8, "divisible_by_16": ["y_ptr", "n"]}  # the spec's own, unchanged


# kills C11 (the first arch only), C12 (spill regressions do not fail the run), C13 (the first failing compile
# ends the run), C14 (the default arches [90]), C15 (a --only run compared as complete: every skipped pair stale)
# and C16 (the spilling pairs listed by their loop spills instead of their stack frames)
def test_compile_kernels_compiles_every_spec_for_each_arch_and_fails_on_failures_and_spills(monkeypatch, capsys):
    from masksub_kernels import _backend
    from tools import compile_kernels, kernel_specs, spill_ratchet

    compiled, compared, regressions = [], [], []

    def compile_one(kernel, signature, constexprs, options, arch):
        compiled.append((kernel, arch))
        if kernel == "broken":
            raise ValueError("ptxas refused it")
        stack = 8 if arch == 90 else 0  # a stack frame, no spill code in loops
        figures = {"stack_bytes": stack, "spills_in_inner_loops": 0, "spills_in_loops": 0}
        return {"seconds": 0.0, "shared_bytes": 0, "registers": 40, **figures, "num_warps": 4, "ptx_bytes": 1,
                "cubin_bytes": 1}  # fmt: skip

    def compare(results, complete):
        compared.append(complete)
        return list(regressions), []

    monkeypatch.setattr(_backend, "triton_interpreted", lambda: False)  # (the tests run under the interpreter)
    specs = [("op.broken", "broken", {}, {}, {}), ("op.fine", "fine", {}, {}, {})]
    monkeypatch.setattr(kernel_specs, "kernel_specs", lambda: iter(specs))
    monkeypatch.setattr(compile_kernels, "compile_one", compile_one)
    monkeypatch.setattr(spill_ratchet, "compare", compare)
    assert compile_kernels.main([]) == 1  # the failed compile; the next spec still compiled, both default arches
    assert compiled == [("broken", 80), ("broken", 90), ("fine", 80), ("fine", 90)] and compared == [True]
    out = capsys.readouterr().out
    assert "FAILED sm_80 op.broken: ValueError: ptxas refused it" in out
    assert "compiled 2 of 4 kernel/arch pairs" in out and "1 kernel/arch pairs spill registers" in out
    assert compile_kernels.main(["--only", "fine"]) == 0 and compared[-1] is False
    regressions.append("sm_90 op.fine: stack_bytes 8 > 0 in the baseline")
    assert compile_kernels.main(["--only", "fine"]) == 1  # a spill over the baseline fails the run


_COMPILED_KERNELS = """
import importlib, json, pkgutil, sys
import triton
import masksub_kernels.ops as ops
from tools.kernel_specs import kernel_specs
compiled = {id(spec[1]) for spec in kernel_specs()}
found = {}
for info in pkgutil.iter_modules(ops.__path__):
    module = importlib.import_module(f"masksub_kernels.ops.{info.name}")
    for name, value in vars(module).items():
        if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
            found[f"{info.name}.{name}"] = id(value) in compiled
json.dump(found, sys.stdout)
"""


# kills K01 (linear_loss_grads' specs left out of SPECS) and K02 (token_grid_mask's): a kernel no spec compiles
def test_every_kernel_of_the_ops_is_compiled_by_a_spec():
    # tools/kernel_specs.py lists the specs by hand, op by op: a new kernel, or an op's table dropped from SPECS,
    # would leave a kernel that only a GPU run compiles (the full compile test passes without it: its spill
    # baseline only notes the pairs no longer compiled)
    found = _json_from_script(_COMPILED_KERNELS)
    assert len(found) >= 15 and all(found.values()), sorted(name for name, ok in found.items() if not ok)


_SELECTION_LAUNCHES = """
import json, sys, torch
from masksub_kernels.ops import token_select
from tools.kernel_specs import token_select_specs
from tools.perf_model.capture import recording, specialise
meta = torch.device("meta")
result = {}
for name, kernel, types, constants, options in token_select_specs():
    if name.startswith("select["):  # a launch at N = BLOCK_N keys, of the spec's flags
        n = constants["BLOCK_N"]
        def mask(on):
            return torch.zeros(2, n, dtype=torch.bool, device=meta) if on else None
        seed_tensor = torch.zeros(1, dtype=torch.int64, device=meta) if constants["SEED_FROM_PTR"] else None
        with recording(token_select) as launches:
            token_select._select_triton(2**40 + 1, seed_tensor, 2, n, n // 4, meta, constants["ORDERED"],
                                        constants["WRITE_INVERSE"], mask(constants["HAS_KEEP"]),
                                        mask(constants["HAS_DROP"]))
        unread = {"keep_ptr": not constants["HAS_KEEP"], "drop_ptr": not constants["HAS_DROP"],
                  "inv_ptr": not constants["WRITE_INVERSE"]}
    elif name.startswith("copy_rows["):  # the gather of a ViT-B's kept tokens (int64 ids), the scatter (int32 inv)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[types["src_ptr"][1:]]
        row_map = torch.empty(2, 49, dtype=torch.int64 if "gather" in name else torch.int32, device=meta)
        with recording(token_select) as launches:
            token_select._copy_rows_triton(torch.empty(2, 197, 768, dtype=dtype, device=meta), row_map, 1)
        unread, constants = {}, {}  # (its tile: BLOCK_R follows the dtype, the spec's does not)
    else:
        continue
    (launch,) = launches
    signature = specialise(launch)[0]
    def pointers(sig):
        return {k: v for k, v in sig.items() if k.endswith("_ptr") and not unread.get(k)}
    result[name] = {
        "spec": [options["num_warps"], pointers(types), constants],
        "launch": [launch.kwargs["num_warps"], pointers(signature), {k: launch.bound[k] for k in constants}],
    }
json.dump(result, sys.stdout)
"""


# kills K05 (the selection specs at 4 warps whatever their block) and K14 (the scatter's int32 map compiled as int64)
def test_token_select_specs_take_the_launchers_warps_flags_and_pointer_types():
    # the token selection's specs are made by hand: each must compile what its launcher launches for the same flags
    # and block (sort_warps' warps: 32 at MAX_TOKENS keys) with the pointers it passes (masks absent: not read)
    specs = _json_from_script(_SELECTION_LAUNCHES)
    assert len(specs) == 16  # 10 selections, 6 copies
    for name, pair in specs.items():
        assert pair["spec"] == pair["launch"], name


# kills K03 (the selection's MAX_TOKENS block dropped) and K04 (the cell mask's): the variants with the most shared
# memory, the ones a card's limit would refuse first
def test_the_sorting_kernels_are_compiled_at_their_largest_block():
    from masksub_kernels.ops._common import MAX_TOKENS
    from tools.kernel_specs import grid_mask_specs, token_select_specs

    blocks = {}
    for name, _, _, constexprs, _ in [*token_select_specs(), *grid_mask_specs()]:
        for block in ("BLOCK_N", "BLOCK_L"):
            if name.startswith(("select[", "cell_mask[")) and block in constexprs:
                blocks[name.split("[")[0]] = max(blocks.get(name.split("[")[0], 0), constexprs[block])
    assert blocks == {"select": MAX_TOKENS, "cell_mask": MAX_TOKENS}
