"""The cards the model predicts for: the figures it uses, each with where it comes from."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    name: str
    sms: int
    clock_ghz: float  # the sustained SM clock under a memory-bound load (boost clock of the SXM parts)
    copy_tbps: float  # measured device-to-device copy, bytes read + written: the roofline of every op here
    schedulers_per_sm: int = 4  # warp schedulers per SM, each issues one warp-instruction per cycle
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    shared_per_sm: int = 233472  # 228 KB of shared memory per SM on sm_90 (227 KB usable by one block)
    shared_reserved_per_block: int = 1024  # the driver reserves 1 KB per resident block on sm_80+
    blocks_per_sm: int = 32
    # MUFU (exp2, log2, reciprocal, rsqrt, sin, cos): 16 results per clock per SM on sm_80 and sm_90 (CUDA C++
    # Programming Guide, "Arithmetic Instructions" throughput table), a quarter of the issue rate: a warp's MUFU
    # holds its scheduler's special-function unit for 8 cycles while other instructions keep issuing.
    mufu_per_sm_per_clock: int = 16
    dram_latency_ns: float = 650.0  # a global load's round trip under load (HBM ~500 ns idle, more when busy)
    launch_us: float = 2.5  # GPU time per launch back to back without CUDA graphs (launch gap + ramp + drain)
    # Dense bf16 tensor-core peak (no sparsity) of the SXM parts: 989 TFLOP/s for H100 and H200 (NVIDIA's data
    # sheets). ASSUMPTION, to calibrate on a GPU: cuBLAS reaches 70% of it on the compute-bound matmuls of the
    # fused-linear loss (K = 768 or R = 1024 deep, N = 30522): tools/perf_model/linear_loss.py.
    bf16_dense_tflops: float = 989.0
    matmul_efficiency: float = 0.70

    @property
    def issue_rate(self) -> float:
        """Warp-instructions per second over the whole card."""
        return self.sms * self.schedulers_per_sm * self.clock_ghz * 1e9

    @property
    def copy_bytes_per_s(self) -> float:
        return self.copy_tbps * 1e12

    @property
    def matmul_flops_per_s(self) -> float:
        """The assumed sustained bf16 matmul rate: matmul_efficiency x the dense peak."""
        return self.matmul_efficiency * self.bf16_dense_tflops * 1e12


# H200 SXM 141 GB: 132 SMs, 4.8 TB/s on paper, ~4.3 TB/s measured copy on the machines lent to this project
# (docs/ANCHORS: "H200 device-to-device copy measured at ~4.3 TB/s").
H200 = Card("H200", sms=132, clock_ghz=1.98, copy_tbps=4.3)
# H100 SXM 80 GB HBM3: 132 SMs, 3.35 TB/s on paper. A device-to-device copy measured ~3.0 TB/s on the machines
# lent here (ANCHORS: "a device-to-device copy here measured about 3.0 TB/s"); 2.9-3.0 TB/s is what copy benchmarks
# report for this card elsewhere too, so 3.0 is used (not the paper figure: no kernel reaches it).
H100 = Card("H100", sms=132, clock_ghz=1.98, copy_tbps=3.0)

CARDS = {card.name: card for card in (H200, H100)}


# Other forms of the same chips, with other figures: an H100 PCIe has 114 SMs and ~2 TB/s, the NVL cards other
# clocks and bandwidths; none is modelled
OTHER_FORMS = ("PCIE", "NVL")


def card_for_device(device_name: str) -> Card | None:
    """The card of a torch.cuda device name ('NVIDIA H200', 'NVIDIA H100 80GB HBM3'), or None (an unknown card, or
    a PCIe / NVL form of a known chip: its SXM figures would be wrong there)."""
    upper = device_name.upper()
    if any(form in upper for form in OTHER_FORMS):
        return None
    words = set(re.split(r"[^A-Z0-9]+", upper))  # (a word: 'H200' is not the GH200's, another chip)
    for name, card in CARDS.items():
        if name in words:
            return card
    return None
