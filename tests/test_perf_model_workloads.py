"""The performance model's byte formulas (tools/perf_model/workloads.py) worked by hand, on the arguments the
kernels' launches bind (meta tensors: sizes only), and on the launches the code records: the README's headline cases
and the fused-linear chunk's loss kernels (helper-210's second-pass audit). The recorded-launch tests run in a
subprocess without TRITON_INTERPRET (recording only, nothing compiled: ~15 s each)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tools.perf_model import workloads

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


def _loss_args(m: int, c: int, dtype: torch.dtype, **flags) -> dict:
    """A loss launch's bound arguments as workloads._loss reads them (meta tensors: sizes only)."""
    args = {"M": m, "C": c, "z_ptr": torch.empty(m, c, dtype=dtype, device=META),
            "y_ptr": torch.empty(m, dtype=torch.int64, device=META), "DENSE": False, "SPLIT": False, "chunk": c,
            "BLOCK_C": 1024, "BCE": False, "HAS_MAIN": True, "HAS_SUB": True, "REDUCE": False}  # fmt: skip
    return {**args, **flags}


def test_the_split_loss_kernels_bytes_by_hand():
    # kills W5 (the split forward's partial states without their ticket: 9 x 4 bytes, not 10 x 4), W6 (the reduced
    # [4] losses' 16 bytes not written), W7 (the split backward reads its row's stats once, not once per program)
    # and W8 (class ids as 4 bytes, not int64's 8). LLM-like M = 8, C = 128256 bf16, rows split into chunks of
    # 4096 classes: 32 splits (128256 / 4096 = 31.3), each 4 blocks of 1024.
    fwd = _loss_args(8, 128256, torch.bfloat16, SPLIT=True, chunk=4096, REDUCE=True)
    # reads: both logits 2 x 8 x 128256 x 2 = 4,104,192 + class ids 8 x 8 = 64 + partials (9 + 1) x 4 x 8 x 32 =
    # 10,240 + the reduction's tickets, loss rows and ids 8 x (4 + 8 + 8) = 160 = 4,114,656; written: the stats
    # 9 x 8 x 4 = 288 + partials 10,240 + the 4 reduced losses 16 = 10,544. The reduction's loop runs ~0 times
    assert workloads._loss(fwd) == ([(4, 0)], 1024, 4_114_656, 10_544)
    bwd = _loss_args(8, 128256, torch.bfloat16, SPLIT=True, chunk=4096, gm_ptr=None, WRITE_DZ=True, WRITE_DS=True,
                     dz_ptr=fwd["z_ptr"], ds_ptr=fwd["z_ptr"])  # fmt: skip
    # reads: both logits 4,104,192 + ids 64 + each of the 32 programs of a row its 9 stats: 9 x 4 x 8 x 32 = 9,216
    # = 4,113,472; written: dz and ds in bf16 4,104,192
    assert workloads._loss(bwd) == ([4], 1024, 4_113_472, 4_104_192)


def test_the_sub_term_alone_reads_the_main_logits_too():
    # kills W4 (a launch of the sub term alone charged one logits read): its target is main's softmax, so it reads
    # z and s (_loss_fwd_kernel: z_ptr is "also the sub term's teacher"), and no class ids.
    # M = 384, C = 30522 fp32: 2 x 384 x 30522 x 4 = 93,763,584 read; the stats 9 x 384 x 4 = 13,824 written
    sub_only = _loss_args(384, 30522, torch.float32, HAS_MAIN=False, BLOCK_C=2048)
    assert workloads._loss(sub_only) == ([14], 2048, 93_763_584, 13_824)
    main_only = _loss_args(384, 30522, torch.float32, HAS_SUB=False, BLOCK_C=2048)
    assert workloads._loss(main_only)[2:] == (93_763_584 // 2 + 384 * 8, 13_824)


def test_the_token_kernels_bytes_by_hand():
    # kills W1 (the kept ids as 4 bytes, not int64's 8), W2 (select + gather's N inverse entries not written) and
    # W3 (the scatter charged a read of every row of N, not the K kept). ViT-B: B = 256, N = 196, K = 98, P = 1,
    # D = 768, bf16
    b, n, k, p, d = 256, 196, 98, 1, 768
    x = torch.empty(b, p + n, d, dtype=torch.bfloat16, device=META)
    ids = torch.empty(b, k, dtype=torch.int64, device=META)
    select = {"N": n, "K": k, "ids_ptr": ids, "WRITE_INVERSE": True, "BLOCK_N": 256}
    # the ids 256 x 98 x 8 = 200,704 and the inverse 256 x 196 x 4 = 200,704: nothing read (the keys are drawn)
    assert workloads._select(select) == ([], 256, 0, 401_408)
    gather = {"ids_ptr": ids, "P": p, "K": k, "N": n, "D": d, "x_ptr": x, "BLOCK_R": 32, "BLOCK_D": 256}
    # 256 x 99 rows x 768 x 2 = 38,928,384 read and written, + the ids and the inverse 401,408 written
    assert workloads._select_gather(gather) == ([4], 8192, 38_928_384, 39_329_792)
    inv = torch.empty(b, n, dtype=torch.int32, device=META)
    scatter = {"total_rows": b * (p + n), "D": d, "src_ptr": x, "map_ptr": inv, "P": p, "MAP_LEN": n, "SRC_LEN": k,
               "BLOCK_R": 32, "BLOCK_D": 256}  # fmt: skip
    # read: the K kept rows and the prefix 256 x 99 x 1536 = 38,928,384 + the map 256 x 196 x 4 = 200,704;
    # written: every row of the output 256 x 197 x 1536 = 77,463,552 (the dropped ones as zeros)
    assert workloads._copy_rows(scatter) == ([], 8192, 39_129_088, 77_463_552)


def _without_interpreter(script: str) -> object:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_headline_cases_bytes_are_the_recorded_launches_by_hand():
    # kills W9 (the loss's full minimal bytes as 6 logits, not 4: the forward's read serves the backward) and W10
    # (the scatter's minimal bytes as a read of every row of N, not of the K kept), and any byte formula of the two
    # kernels the README's table quotes, on the launches their code makes
    script = (
        "import json; from tools.perf_model import workloads as w; out = {}\n"
        "for c in w.token_select_cases() + w.loss_cases():\n"
        "    if c.shape in ('ViT-B B=256 N=196 D=768', 'BERT-like M=16384 C=30522') and c.variant in ('', "
        "'CE, class ids'):\n"
        "        out[c.op + ' ' + c.mode] = [c.minimal_bytes, c.torch_launches, "
        "[[l.name, *w.kernel_terms(l)[2:]] for l in c.launches]]\n"
        "print(json.dumps(out))"
    )
    cases = _without_interpreter(script)
    # token select, ViT-B: forward 256 x 99 kept rows x 768 x 2 read and written = 77,856,768; backward the K kept
    # rows read and all 197 written: 256 x (99 + 197) x 1536 = 116,391,936
    gather = ["_select_gather_kernel", 38_928_384, 39_329_792]
    scatter = ["_copy_rows_kernel", 39_129_088, 77_463_552]
    assert cases["token_select forward"] == [77_856_768, 0, [gather]]
    assert cases["token_select backward"] == [116_391_936, 0, [scatter]]
    assert cases["token_select full"] == [77_856_768 + 116_391_936, 0, [gather, scatter]]
    # the loss, BERT-like 16384 x 30522 bf16 (L = 1,000,144,896 bytes per logits), CE, class ids (131,072 bytes):
    # forward reads z and s 2 L, the ids, the reduction's tickets, loss rows and ids 16384 x 20 = 327,680:
    # 2,000,748,544; writes the stats 16384 x 36 = 589,824 + 16. Backward: 2 L + ids + the stats 589,824 read,
    # dz and ds 2 L written. Minimal: 2 L + ids forward; 4 L + ids backward and full. One tickets fill forward
    forward = ["_loss_fwd_kernel", 2_000_748_544, 589_840]
    backward = ["_loss_bwd_kernel", 2_001_010_688, 2_000_289_792]
    assert cases["loss forward"] == [2_000_420_864, 1, [forward]]
    assert cases["loss backward"] == [4_000_710_656, 0, [backward]]
    assert cases["loss full"] == [4_000_710_656, 1, [forward, backward]]


def test_the_fused_linear_chunks_loss_kernels_by_hand():
    # kills L18 (the chunk's logits unpadded: the realigning variant, 13 and 6 whole blocks, not the aligned one's
    # 14 and 7 that the op's rows padded to 30528 take) and L19 (each loss kernel charged a launch in its time: the
    # chunk's launches are counted once, from the forward's recorded code). Each kernel's prediction stubbed at 10 us
    script = (
        "import json; from types import SimpleNamespace; from unittest import mock\n"
        "from tools.perf_model import linear_loss as ll; from tools.perf_model.hardware import H200\n"
        "seen = []\n"
        "def fake(card, launch, terms):\n"
        "    seen.append([launch.name, list(launch.grid), *terms, launch.bound.get('VEC', 1)])\n"
        "    return SimpleNamespace(kernel=launch.name, t_kernel_us=10.0)\n"
        "with mock.patch.object(ll, 'predict_launch', fake):\n"
        "    total, launches, _ = ll._loss_kernels_us(H200, 384, 30522)\n"
        "print(json.dumps([total, launches, seen]))"
    )
    total, launches, seen = _without_interpreter(script)
    assert (total, launches) == (20.0, 1)  # two kernels at 10 us; one launch (forward and backward in one)
    # forward: z and s fp32 2 x 384 x 30522 x 4 = 93,763,584 + ids 3,072 read, the stats 9 x 384 x 4 written;
    # backward: the same + the stats 13,824 read, dz and ds bf16 over the logits' rows 2 x 384 x 30522 x 2 written
    assert seen == [
        ["_loss_fwd_kernel", [384, 1, 1], [30522 // 2048], 2048, 93_766_656, 13_824, 1],
        ["_loss_bwd_kernel", [384, 1, 1], [30522 // 4096], 4096, 93_780_480, 46_881_792, 1],
    ]


def test_the_token_mask_backward_reads_every_gradient_it_writes_or_sums():
    # kills W12 (the backward charged the masked half alone whatever it writes): writing dT it reads all of dT_out
    # (the kept tokens pass through), for the mask token's gradient alone only the masked half. Swin-T stage 1:
    # B = 256, 56 x 56 x 96 bf16 = 154,140,672 bytes; 64 cells (1 byte each); 7 lines a program, 2 column blocks
    g = torch.empty(256, 56, 56, 96, dtype=torch.bfloat16, device=META)
    size = 256 * 56 * 56 * 96 * 2
    args = {"g_ptr": g, "part_ptr": torch.empty(1024, 96, device=META), "lines_per_program": 7, "W": 56,
            "BLOCK_W": 32, "BLOCK_C": 128, "cell_ptr": torch.empty(256, 64, dtype=torch.uint8, device=META),
            "C": 96, "WRITE_GRAD_X": True, "WRITE_PARTIALS": True}  # fmt: skip
    # read dT_out 154,140,672 + the cells 16,384; written dT 154,140,672 + the partial sums 1024 x 96 x 4
    assert workloads._mask_tokens_backward(args) == ([7, 2], 4096, size + 16_384, size + 1024 * 96 * 4)
    partials_only = {**args, "WRITE_GRAD_X": False}
    assert workloads._mask_tokens_backward(partials_only)[2:] == (size // 2 + 16_384, 1024 * 96 * 4)
