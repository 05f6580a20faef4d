// A row copy shared by the gather/scatter of token_select.cu and the token masks of grid_mask.cu:
//
//   dst[r, :] = *source(r)   for r < total_rows   (row_bytes bytes; dst rows contiguous)
//   dst[r, :] = 0            where source(r) is null (a dropped token, a removed cell's gradient)
//
// `source` is a device functor returning the byte address of the source row, so each op states only its index map.
// The copy is dtype-agnostic: a row moves as the widest word (16, 8, 4 or 2 bytes) dividing every address and
// stride a source row can start at, dst and the row size, so fp32, fp16, bf16 and fp64 share one kernel per word.
// A group of `lanes` threads (a power of two <= 32) copies one row, each lane loading up to kCopyUnroll words
// before storing them (several 16-byte loads in flight per thread); tails are masked; index arithmetic is int64.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace masksub {
namespace detail {

constexpr int kCopyThreads = 256;
constexpr int kCopyUnroll = 4;
// Grid cap of the row copies and the image masks: work beyond blocks x rows per block is covered by a grid-stride
// loop. A tuning knob with a default, not a switch between builds: it changes a value, never which lines compile.
// The CUDA emulator's build lowers it (-DMASKSUB_MAX_GRID_BLOCKS=3) so that the tests run that loop on small inputs.
#ifndef MASKSUB_MAX_GRID_BLOCKS
#define MASKSUB_MAX_GRID_BLOCKS (int64_t{1} << 20)
#endif
constexpr int64_t kMaxGridBlocks = MASKSUB_MAX_GRID_BLOCKS;

inline uint64_t address_bits(const void* pointer) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(pointer));
}

// One row of `words` words from `in` (null: zeros) to `out`, by a group of `lanes` threads of which this is `lane`:
// each lane loads up to kCopyUnroll words (strided by `lanes`, so a group's accesses are contiguous) before storing
// them. Shared by the row copies below and token_select.cu's fused select + gather.
template <typename Word>
__device__ __forceinline__ void copy_row(const Word* __restrict__ in, Word* __restrict__ out, int64_t words,
                                         int lane, int lanes) {
  for (int64_t base = lane; base < words; base += int64_t{kCopyUnroll} * lanes) {
    Word values[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
      const int64_t c = base + int64_t{u} * lanes;
      values[u] = (in != nullptr && c < words) ? __ldg(in + c) : Word{};
    }
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
      const int64_t c = base + int64_t{u} * lanes;
      if (c < words) out[c] = values[u];
    }
  }
}

template <typename Word, typename RowSource>
__global__ void __launch_bounds__(kCopyThreads)
    copy_rows_kernel(Word* __restrict__ dst, int64_t total_rows, int64_t words_per_row, int lanes_log2,
                     RowSource source) {
  const int lanes = 1 << lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t rows_per_block = kCopyThreads >> lanes_log2;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  for (int64_t row = blockIdx.x * rows_per_block + (threadIdx.x >> lanes_log2); row < total_rows; row += row_step) {
    copy_row(reinterpret_cast<const Word*>(source(row)), dst + row * words_per_row, words_per_row, lane, lanes);
  }
}

// Lanes per row (log2): enough that each lane holds at most kCopyUnroll words of a row, at most one warp.
inline int copy_lanes_log2(int64_t words_per_row) {
  const int64_t words_per_lane = (words_per_row + kCopyUnroll - 1) / kCopyUnroll;
  int lanes_log2 = 0;
  while (lanes_log2 < 5 && (int64_t{1} << lanes_log2) < words_per_lane) ++lanes_log2;
  return lanes_log2;
}

template <typename Word, typename RowSource>
cudaError_t launch_copy_words(RowSource source, void* dst, int64_t total_rows, int64_t row_bytes,
                              cudaStream_t stream) {
  const int64_t words_per_row = row_bytes / static_cast<int64_t>(sizeof(Word));
  const int lanes_log2 = copy_lanes_log2(words_per_row);
  const int64_t rows_per_block = kCopyThreads >> lanes_log2;
  int64_t blocks = (total_rows + rows_per_block - 1) / rows_per_block;
  if (blocks > kMaxGridBlocks) blocks = kMaxGridBlocks;
  copy_rows_kernel<Word, RowSource><<<static_cast<unsigned int>(blocks), kCopyThreads, 0, stream>>>(
      static_cast<Word*>(dst), total_rows, words_per_row, lanes_log2, source);
  return cudaGetLastError();
}

// Calls f(Word{}) with the widest word (uint4, uint2, uint32_t, uint16_t: 16, 8, 4, 2 bytes) whose size divides
// alignment_bits, the bitwise OR of every address and byte stride a copy touches (elements are >= 2 bytes).
template <typename F>
cudaError_t with_copy_word(uint64_t alignment_bits, F&& f) {
  if ((alignment_bits & 15u) == 0) return f(uint4{});
  if ((alignment_bits & 7u) == 0) return f(uint2{});
  if ((alignment_bits & 3u) == 0) return f(uint32_t{});
  return f(uint16_t{});
}

// alignment_bits: the bitwise OR of every address a source row can start at and of the byte strides between
// them (dst and row_bytes are added here); the lowest set bit bounds the word size.
template <typename RowSource>
cudaError_t launch_copy_rows(RowSource source, uint64_t alignment_bits, void* dst, int64_t total_rows,
                             int64_t row_bytes, cudaStream_t stream) {
  if (total_rows == 0 || row_bytes == 0) return cudaSuccess;
  const uint64_t bits = alignment_bits | address_bits(dst) | static_cast<uint64_t>(row_bytes);
  return with_copy_word(bits, [&](auto word) {
    return launch_copy_words<decltype(word)>(source, dst, total_rows, row_bytes, stream);
  });
}

}  // namespace detail
}  // namespace masksub
