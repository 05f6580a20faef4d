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


_EVERY_SPEC = """
import json, sys
from tools.kernel_specs import kernel_specs
specs = list(kernel_specs())
assert len({spec[0] for spec in specs}) == len(specs), "two specs of one name"
json.dump({name: {"types": signature, "constants": {k: str(v) for k, v in constexprs.items()}, "options": options}
           for name, kernel, signature, constexprs, options in specs}, sys.stdout)
"""


# helper-200's finding 1: the masks' and selections' hand-made specs compiled i64 sizes (the JIT passes i32), a runtime
# P (a constant 1 with a class token) and fp32's copy tile for every dtype: variants no launch runs
@pytest.fixture(scope="module")
def every_spec():
    """Every spec by its full name, recorded in a process without the interpreter (whose kernels record nothing)."""
    return _json_from_script(_EVERY_SPEC)


def test_every_spec_is_a_recorded_launch_as_the_jit_specialises_it(every_spec):
    specs = every_spec
    assert len(specs) >= 150  # (names unique: the script asserts it)
    # every spec carries the JIT's hints (recorded; a hand-made spec has none) and its launch's warps
    assert all(isinstance(spec["options"].get("divisible_by_16"), list) for spec in specs.values())
    assert all(spec["options"]["num_warps"] in (4, 8, 16, 32) for spec in specs.values())
    # sizes below 2^31 are i32 for the JIT, whatever the launcher's int; seeds drawn at random are i64
    for name, spec in specs.items():
        for arg, kind in spec["types"].items():
            assert kind != "i64" or arg == "seed", (name, arg)
    copies = {name.split(".", 1)[1]: spec for name, spec in specs.items() if ".copy_rows[" in name}
    gather, scatter = copies["copy_rows[bf16,gather]"], copies["copy_rows[bf16,scatter]"]
    assert gather["constants"]["P"] == "1" and "P" not in gather["types"]  # the class token: a constant 1
    assert copies["copy_rows[bf16,gather,no_prefix]"]["types"]["P"] == "i32"  # no prefix: 0, a runtime size
    assert {gather["types"]["map_ptr"], scatter["types"]["map_ptr"]} == {"*i64", "*i32"}  # ids, inv
    # the copy's tile follows the element size (~16 KB per program): 16 rows of fp32, 32 of bf16 / fp16
    assert [copies[f"copy_rows[{t},gather]"]["constants"]["BLOCK_R"] for t in ("fp32", "fp16", "bf16")] == [
        "16", "32", "32"
    ]  # fmt: skip
    # the selections' warps follow their block (sort_warps: 32 at MAX_TOKENS keys)
    select = {name: spec for name, spec in specs.items() if ".select[" in name}
    assert len(select) == 10
    for name, spec in select.items():
        block = int(spec["constants"]["BLOCK_N"])
        assert spec["options"]["num_warps"] == max(4, min(32, block // 256)), name
        assert name.endswith(f"block={block}]"), name
    # the bias gradient's scaling: one row, a constant the JIT makes of it (a compile of its own)
    bias = specs["linear_loss_grads.scale[fp32->bf16,bias]"]
    assert bias["constants"]["rows"] == "1" and "rows" in specs["linear_loss_grads.scale[fp32->bf16]"]["types"]


# helper-204: kills a spec made by hand again with i32 sizes and no hints (e.g. token_grid_mask_specs written
# out), `hinted = []` in _recorded_spec (only the loss tests in test_compile_kernels.py noticed), and _recorded_specs
# dropping the hints of the masks' / selections' specs
def test_every_spec_hints_its_pointers_as_a_launch_on_fresh_tensors_does(every_spec):
    # the specs' tensors are fresh meta allocations or views at 16-byte offsets, as a launch's are (CUDA's caching
    # allocator aligns to 512 B): the JIT hints every pointer, and a spec whose pointer lacks the hint compiles the
    # unvectorised variant no launch runs. A hand-made spec carries no hints at all
    for name, spec in every_spec.items():
        pointers = {arg for arg, kind in spec["types"].items() if kind.startswith("*")}
        assert pointers and pointers <= set(spec["options"]["divisible_by_16"]), name


# helper-204: kills the JIT's default warps in _recorded_spec changed from 4 (e.g. `{"num_warps": 8, **...}`: the
# test above allows any of 4, 8, 16, 32)
def test_kernels_launched_without_num_warps_compile_at_the_jits_default_4(every_spec):
    # the masks', the copies' and the scaling's launchers pass no num_warps (or 4): Triton's default for CUDA is 4
    kinds = ("copy_rows[", "mask_image[", "mask_tokens[", "mask_tokens_backward[", "sum_partials[", "scale[")
    named = {name: spec for name, spec in every_spec.items() if name.split(".", 1)[1].startswith(kinds)}
    assert len(named) >= 35
    for name, spec in named.items():
        assert spec["options"]["num_warps"] == 4, name


# helper-204: kills _SEED below 2^31 (e.g. 12345: the drawn-seed specs compile an i32 seed, which a seed drawn from
# [0, 2^63) practically never is)
def test_drawn_seeds_are_compiled_as_int64(every_spec):
    seeded = {name: spec for name, spec in every_spec.items() if "seed" in spec["types"]}
    drawn = {
        name: spec
        for name, spec in seeded.items()
        if spec["constants"]["SEED_FROM_PTR"] == "False" and not name.endswith(",seed=i32]")  # a caller's seed=42
    }
    assert len(drawn) >= 20
    for name, spec in drawn.items():
        assert spec["types"]["seed"] == "i64", name


# helper-204's F1: kills the seed-tensor specs recorded with a drawn seed again
def test_seed_tensor_specs_take_the_zero_seed_the_ops_pass(every_spec):
    # with a seed tensor, resolve_seed passes the integer seed 0, which the JIT types i32 (do_not_specialize keeps
    # it a runtime argument): the compile of a seed-tensor launch has an i32 seed, not the drawn seeds' i64
    from_ptr = {name: spec for name, spec in every_spec.items() if spec["constants"].get("SEED_FROM_PTR") == "True"}
    assert len(from_ptr) >= 7
    for name, spec in from_ptr.items():
        assert spec["types"]["seed"] == "i32", name


# helper-204's F2: kills a selection spec
# with the inverse at a block the fused select + gather takes (a variant no launch runs)
def test_selection_specs_write_the_inverse_only_above_the_fused_limit(every_spec):
    # on the triton backend the selection writes the inverse only for random_token_select above FUSED_MAX_TOKENS
    # keys (below, the one-launch select + gather does); random_keep_indices never writes it, at any block
    from masksub_kernels.ops.token_select import FUSED_MAX_TOKENS

    select = {name: spec for name, spec in every_spec.items() if ".select[" in name}
    for name, spec in select.items():
        if spec["constants"]["WRITE_INVERSE"] == "True":
            assert int(spec["constants"]["BLOCK_N"]) > FUSED_MAX_TOKENS, name
    # random_keep_indices' always-keep / drop-first masks (the mlm family's selection) are compiled without it
    assert any(
        spec["constants"]["WRITE_INVERSE"] == "False" and spec["constants"]["HAS_KEEP"] == "True"
        for spec in select.values()
    )


# kills K03 (the selection's MAX_TOKENS block dropped) and K04 (the cell mask's): the variants with the most shared
# memory, the ones a card's limit would refuse first
def test_the_sorting_kernels_are_compiled_at_their_largest_block(every_spec):
    from masksub_kernels.ops._common import MAX_TOKENS

    blocks = {}
    for name, spec in every_spec.items():
        kind = name.split(".", 1)[1].split("[")[0]
        for block in ("BLOCK_N", "BLOCK_L"):
            if kind in ("select", "cell_mask") and block in spec["constants"]:
                blocks[kind] = max(blocks.get(kind, 0), int(spec["constants"][block]))
    assert blocks == {"select": MAX_TOKENS, "cell_mask": MAX_TOKENS}
