"""helper-252's review of the benchmarks, finding 2: the L2 flush between timed repeats reads and writes nothing
that L2 would write back inside the next timed region. CPU only."""

import types

import torch

from masksub_kernels.bench import timing

CPU = torch.device("cpu")
MiB = 2**20


# --- timing.py: the L2 flush (finding 2) --------------------------------------------------------------------------


def test_the_l2_flush_reads_its_whole_buffer_and_writes_none_of_it():
    flush = timing.L2Flush(CPU, nbytes=4096)
    assert flush.buffer.numel() * flush.buffer.element_size() == 4096 and flush.total.numel() == 1
    flush.buffer.fill_(1.0)  # (made as zeros: ones show that every element is read)
    written = flush.buffer._version  # an in-place write (a memset, zero_, fill_) would bump it
    flush()
    flush()
    assert flush.buffer._version == written  # no write into the buffer: L2 holds clean lines of it afterwards
    assert flush.total.item() == 1024  # every one of its 1024 floats read; the one element it writes: the sum


def test_the_l2_flush_reads_several_times_the_l2_of_any_card(monkeypatch):
    assert timing.l2_flush_bytes(CPU) == timing.L2_FLUSH_BYTES == 256 * MiB  # what the memset flushed before
    properties = types.SimpleNamespace(L2_cache_size=50 * MiB)  # an H100 or H200
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    assert timing.l2_flush_bytes(torch.device("cuda")) == 256 * MiB  # > 4x its L2
    properties.L2_cache_size = 96 * MiB  # a card with more L2: 4x it
    assert timing.l2_flush_bytes(torch.device("cuda")) == 384 * MiB
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace())  # older torch
    assert timing.l2_flush_bytes(torch.device("cuda")) == 256 * MiB


def test_the_gpu_timing_flushes_with_the_read_flush_of_the_device(monkeypatch):
    # measure_each makes one timing.L2Flush for the device and calls it before each timed repeat (the order of the
    # calls: test_bench_harness's _FakeGpu); a write flush (torch.empty(...).zero_()) is not what it runs
    from test_bench_harness import _FakeGpu

    gpu = _FakeGpu(monkeypatch, [0, 2, 3, 0])
    made = []
    fake = timing.L2Flush
    monkeypatch.setattr(timing, "L2Flush", lambda device: made.append(device) or fake(device))
    timing.measure(gpu.call, torch.device("cuda:0"), warmup=1, repeats=2, host_pass=False)
    assert made == [torch.device("cuda:0")] and gpu.log.count("flush") == 2
