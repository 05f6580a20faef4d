// Random token selection, gather and scatter for the ViT sub-branch (masksub_kernels/ops/token_select.py).
//
// Maths. X[B, P+N, D]: P prefix tokens, then N patch tokens; keep K of the N per sample:
//   key[b, n] = (draw(seed, b*N + n), n)                 ordered lexicographically (ties in the draw by position)
//   ids[b]    = the positions of the K smallest keys, in ascending-key order (or ascending position if ordered)
//   inv[b, n] = j if n == ids[b, j] else -1
//   Y[b, :P] = X[b, :P];  Y[b, P+j] = X[b, P+ids[b, j]]                        (gather, forward)
//   dX[b, :P] = dY[b, :P];  dX[b, P+n] = dY[b, P+inv[b, n]] or 0 if inv = -1   (scatter, backward)
//
// Selection: one thread block per sample. Each thread draws ITEMS consecutive positions (a "blocked"
// arrangement, so the block's input is in ascending position order), then cub::BlockRadixSort sorts the 32-bit
// draws carrying the 16-bit positions as values. Why a radix sort rather than a shared-memory bitonic network:
//   - work: 8 passes of 4 bits over N keys, against log2(N)(log2(N)+1)/2 compare-exchange stages (91 at 8192),
//     each ending in a barrier;
//   - ties: cub documents BlockRadixSort as stable, so equal draws keep ascending position order, which is the
//     reference's (draw, position) key order without packing 64-bit keys: half the shared memory (32 KB of keys
//     at N = 8192, under the 48 KB static limit) and 8 passes instead of 11-12 over 40-45 key bits;
//   - it is a maintained, tested primitive that ships with the toolkit (no code of our own to get wrong).
// Padding lanes (n >= N) get the draw 0xFFFFFFFF and, being later in position order, sort after every real key.
//
// Always-keep / drop-first flags (optional): the order becomes (class, draw, position), classes 0 = always-keep,
// 1 = ordinary, 2 = drop-first, 3 = padding, with the draw taken as 0 in class 0 and 0xFFFFFFFF in classes 2-3,
// so that classes 0 and 2 come out by position. This is the order of the Python backends' int64 keys
// (token_select.py: -2^63 + p, (draw - 2^31) 2^32 + p (+ N if draw = 0), (2^31 - 1) 2^32 + N + p). It takes two
// stable passes (least significant first, as any radix sort): sort by draw, then by the 2-bit class, which keeps
// the draw order within a class. The class rides in the top two bits of the 16-bit values (positions < 2^14) and
// is the second pass's key; without flags the single pass above runs, unchanged.
//
// Gather / scatter: a row copy (row_copy.cuh) in which each output row reads one source row or none (zeros); this
// file states only the index maps. The scatter writes every element of dX once, without atomics. Where N <= 1024
// the forward is one kernel, select_gather_kernel: each block selects its sample's tokens and copies its rows.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "masksub_kernels.h"
#include "philox.cuh"
#include "row_copy.cuh"

namespace masksub {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------------------------

template <int THREADS, int ITEMS>
struct SelectShared {
  using Sort = cub::BlockRadixSort<uint32_t, THREADS, ITEMS, uint16_t>;
  using Scan = cub::BlockScan<int, THREADS>;
  union {
    typename Sort::TempStorage sort;
    int32_t slot_of[THREADS * ITEMS];  // after the sort: per position, its rank (then its output slot or -1)
  } reuse;
  typename Scan::TempStorage scan;
};

// Position classes of the sort (see the top of the file), kept in the top bits of the sort's 16-bit values.
constexpr int kAlwaysKeep = 0;
constexpr int kOrdinary = 1;
constexpr int kDropFirst = 2;
constexpr int kPadding = 3;
constexpr int kClassShift = 14;
constexpr int kClassBits = 2;
constexpr uint16_t kPositionMask = (1u << kClassShift) - 1u;

__device__ __forceinline__ bool flag_set(const PositionFlags& flags, int64_t row, int position) {
  return flags.data != nullptr && flags.data[row * flags.stride_b + position * flags.stride_n] != 0;
}

// The selection of sample `row` by one thread block (the body of both kernels below). Outputs, each optional (null:
// not written): ids (kept positions, [., num_keep]), inv (slot of each position or -1, [., num_tokens]), removed
// (1 for a dropped position, 0 for a kept one: the grid masks' cell mask), and kept, a shared array that receives
// kept[j] = ids[row, j] for the block's own use (the fused gather). `ordered` concerns ids and kept. Every early
// return is uniform over the block; kept is complete for every thread after the caller's next __syncthreads().
template <int THREADS, int ITEMS, bool FLAGGED>
__device__ __forceinline__ void select_row(SelectShared<THREADS, ITEMS>& shared, uint64_t seed, int64_t row,
                                           int num_tokens, int num_keep, bool ordered,
                                           const PositionFlags& always_keep, const PositionFlags& drop_first,
                                           int64_t* __restrict__ ids, int32_t* __restrict__ inv,
                                           uint8_t* __restrict__ removed, uint16_t* kept) {
  const int tid = threadIdx.x;
  int64_t* row_ids = ids != nullptr ? ids + row * num_keep : nullptr;

  uint32_t draws[ITEMS];
  uint16_t positions[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int position = tid * ITEMS + i;  // blocked: the block's input is in ascending position order
    int position_class = position < num_tokens ? kOrdinary : kPadding;
    if (FLAGGED && position < num_tokens) {
      position_class = flag_set(always_keep, row, position)  ? kAlwaysKeep
                       : flag_set(drop_first, row, position) ? kDropFirst
                                                             : kOrdinary;
    }
    // padding: the largest draw, and later than every real position; the classes 0 and 2: fixed draws
    draws[i] = position_class == kOrdinary ? philox_draw(seed, static_cast<uint64_t>(row * num_tokens + position))
               : position_class == kAlwaysKeep ? 0u
                                               : 0xFFFFFFFFu;
    positions[i] = static_cast<uint16_t>(position | (FLAGGED ? position_class << kClassShift : 0));
  }
  // Stable sort by draw: equal draws stay in ascending position order. Output is striped: item i of thread tid
  // has rank i * THREADS + tid, so consecutive threads hold consecutive ranks (coalesced stores below).
  using Sort = typename SelectShared<THREADS, ITEMS>::Sort;
  if (FLAGGED) {
    // First pass blocked to blocked (the second pass's input arrangement: item i of thread tid has rank
    // tid * ITEMS + i), then a stable pass over the class bits alone.
    Sort(shared.reuse.sort).Sort(draws, positions);
    __syncthreads();  // the storage is reused by the second pass
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      draws[i] = positions[i] >> kClassShift;
      positions[i] = static_cast<uint16_t>(positions[i] & kPositionMask);
    }
    Sort(shared.reuse.sort).SortBlockedToStriped(draws, positions, 0, kClassBits);
  } else {
    Sort(shared.reuse.sort).SortBlockedToStriped(draws, positions);
  }

  const bool per_position = inv != nullptr || removed != nullptr;  // outputs indexed by position, via slot_of
  if (!ordered) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int rank = i * THREADS + tid;
      if (rank < num_keep) {
        if (row_ids != nullptr) row_ids[rank] = positions[i];
        if (kept != nullptr) kept[rank] = positions[i];
      }
    }
    if (!per_position) return;  // uniform over the block: no thread is left waiting at a barrier
  }

  __syncthreads();  // the sort's storage becomes slot_of
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int rank = i * THREADS + tid;
    if (rank < num_tokens) shared.reuse.slot_of[positions[i]] = (ordered || rank < num_keep) ? rank : -1;
  }
  __syncthreads();

  if (ordered) {
    // Ordered output: slot of a kept position = number of kept positions before it (an exclusive prefix sum of
    // the kept flags in position order). Each thread reads and rewrites only its own positions: no barrier
    // between the read and the write.
    int is_kept[ITEMS];
    int slots[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int position = tid * ITEMS + i;
      is_kept[i] = position < num_tokens && shared.reuse.slot_of[position] < num_keep;
    }
    using Scan = typename SelectShared<THREADS, ITEMS>::Scan;
    Scan(shared.scan).ExclusiveSum(is_kept, slots);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int position = tid * ITEMS + i;
      if (position < num_tokens) {
        if (is_kept[i]) {
          if (row_ids != nullptr) row_ids[slots[i]] = position;
          if (kept != nullptr) kept[slots[i]] = static_cast<uint16_t>(position);
        }
        shared.reuse.slot_of[position] = is_kept[i] ? slots[i] : -1;
      }
    }
    if (!per_position) return;
    __syncthreads();
  }

  // Coalesced per-position stores: slot_of holds the output slot of a kept position and -1 for a dropped one.
  for (int position = tid; position < num_tokens; position += THREADS) {
    const int32_t slot = shared.reuse.slot_of[position];
    if (inv != nullptr) inv[row * num_tokens + position] = slot;
    if (removed != nullptr) removed[row * num_tokens + position] = slot < 0 ? 1 : 0;
  }
}

// Register budget: at least 1024 / THREADS blocks per SM (half of the 2048 threads an sm_80/sm_90 SM holds) caps
// every shape at 64 registers per thread. With at most 8 keys per thread (8 draws, 8 positions, the sort's ranks)
// that fits without spills on sm_80 and sm_90a (python -m tools.check_spills); 16 keys per thread
// needed ~100 registers and spilled under the same cap. FLAGGED (always-keep / drop-first flags given) is a
// template parameter, not a runtime branch: one kernel holding both the one-pass and the two-pass sort spilled at
// 1024 x 8 on sm_90a, each alone does not.
template <int THREADS, int ITEMS, bool FLAGGED>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS) select_tokens_kernel(
    uint64_t seed_value, const int64_t* __restrict__ seed_ptr, int num_tokens, int num_keep, bool ordered,
    PositionFlags always_keep, PositionFlags drop_first, int64_t* __restrict__ ids, int32_t* __restrict__ inv,
    uint8_t* __restrict__ removed) {
  __shared__ SelectShared<THREADS, ITEMS> shared;
  // A seed tensor is read here, on the device (never by the host): CUDA-graph replays see its current value.
  const uint64_t seed = seed_ptr != nullptr ? static_cast<uint64_t>(*seed_ptr) : seed_value;
  select_row<THREADS, ITEMS, FLAGGED>(shared, seed, blockIdx.x, num_tokens, num_keep, ordered, always_keep,
                                      drop_first, ids, inv, removed, nullptr);
}

// What one selection launch takes besides its block shape.
struct SelectArgs {
  uint64_t seed;
  const int64_t* seed_ptr;
  int64_t batch_size;
  int num_tokens, num_keep;
  bool ordered;
  PositionFlags always_keep, drop_first;
  int64_t* ids;
  int32_t* inv;
  uint8_t* removed;
};

template <int THREADS, int ITEMS>
struct SortShape {
  static_assert(THREADS * ITEMS <= (1 << kClassShift), "positions travel in the low 14 bits of the sort's values");
  static constexpr int threads = THREADS;
  static constexpr int items = ITEMS;
};

// Calls f(SortShape<THREADS, ITEMS>{}) with the block shape of a selection of num_tokens <= kMaxSelectTokens
// (threads x keys per thread = capacity >= N): the smallest capacity that holds the row, 2-8 keys per thread.
// Static shared memory ranges from 5 KB (128 x 2) to 41 KB (1024 x 8), under the 48 KB limit.
template <typename F>
cudaError_t with_sort_shape(int64_t num_tokens, F&& f) {
  if (num_tokens <= 256) return f(SortShape<128, 2>{});
  if (num_tokens <= 512) return f(SortShape<128, 4>{});
  if (num_tokens <= 1024) return f(SortShape<256, 4>{});
  if (num_tokens <= 2048) return f(SortShape<256, 8>{});
  if (num_tokens <= 4096) return f(SortShape<512, 8>{});
  return f(SortShape<1024, 8>{});
}

template <int THREADS, int ITEMS>
cudaError_t launch_select(const SelectArgs& a, cudaStream_t stream) {
  const unsigned int blocks = static_cast<unsigned int>(a.batch_size);
  if (a.always_keep.data != nullptr || a.drop_first.data != nullptr) {
    select_tokens_kernel<THREADS, ITEMS, true><<<blocks, THREADS, 0, stream>>>(
        a.seed, a.seed_ptr, a.num_tokens, a.num_keep, a.ordered, a.always_keep, a.drop_first, a.ids, a.inv,
        a.removed);
  } else {
    select_tokens_kernel<THREADS, ITEMS, false><<<blocks, THREADS, 0, stream>>>(
        a.seed, a.seed_ptr, a.num_tokens, a.num_keep, a.ordered, a.always_keep, a.drop_first, a.ids, a.inv,
        a.removed);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------------------
// Row sources of the gather and the scatter (row_copy.cuh): the byte address of an output row's source, or null
// ---------------------------------------------------------------------------------------------------------------

template <typename IndexT>
struct GatherRows {  // row (b, j) of Y [B, P+K, D]
  const char* x;
  int64_t stride_b, stride_s;  // bytes
  const IndexT* ids;
  int64_t stride_ib, stride_ik, P, N, K;
  __device__ __forceinline__ const char* operator()(int64_t row) const {
    const int64_t b = row / (P + K);
    const int64_t j = row - b * (P + K);
    int64_t s = j;
    if (j >= P) {
      const int64_t id = static_cast<int64_t>(ids[b * stride_ib + (j - P) * stride_ik]);
      if (id < 0 || id >= N) return nullptr;  // an out-of-range id reads nothing (zeros), never stray memory
      s = P + id;
    }
    return x + b * stride_b + s * stride_s;
  }
};

struct ScatterRows {  // row (b, t) of dX [B, P+N, D]
  const char* grad_y;
  int64_t stride_b, stride_s;  // bytes
  const int32_t* inv;
  int64_t stride_vb, stride_vn, P, N, K;
  __device__ __forceinline__ const char* operator()(int64_t row) const {
    const int64_t b = row / (P + N);
    const int64_t t = row - b * (P + N);
    int64_t s = t;
    if (t >= P) {
      const int64_t slot = inv[b * stride_vb + (t - P) * stride_vn];
      if (slot < 0 || slot >= K) return nullptr;  // a dropped token: its gradient is 0
      s = P + slot;
    }
    return grad_y + b * stride_b + s * stride_s;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Fused selection + gather: the forward where N <= kFusedMaxTokens
// ---------------------------------------------------------------------------------------------------------------
//
// Block (b, c): sample b's selection (select_row, as the selection kernel makes it), then its P + K output rows,
// words [c * split_words, (c + 1) * split_words) of each:
//   Y[b, t] = X[b, t] for t < P;   Y[b, P + j] = X[b, P + kept[j]]   with kept[j] = ids[b, j], in shared memory.
// The kept positions never leave the block (no second launch, no ids read back), and block (b, 0) writes ids and
// inv. With several column splits each block of a sample sorts the same draws again, so that no block waits on
// another; the launcher takes as few splits as give about kFusedBlocks blocks. The sort runs once per block
// before its copy (~1.6k warp-instructions per warp at N = 196, ~2.7k at N = 1024 in the sm_90a SASS, against
// ~1k for the copy of a ViT-S sample at N = 196, ~8.5k for a ViT-B one at N = 1024). Above 1024 tokens the sort
// needs 8 keys per thread (63-64 registers alone, the launch bounds' cap) and, from 2049 on, blocks of 512-1024
// threads (1-2 per SM, whose sorts no other block's copy would hide): select + gather (two launches) takes over.
// No division: the grid says the sample and the split.
constexpr int64_t kFusedMaxTokens = 1024;
constexpr int64_t kFusedBlocks = 256;        // about two blocks per SM of a 132-SM H100 / H200
constexpr int64_t kFusedMinSplitWords = 32;  // a split copies at least 32 words of each row (512 bytes in uint4)

// The fused kernel's block shape for num_tokens <= kFusedMaxTokens: always 256 threads (8 warps, each lane with
// kCopyUnroll words in flight: 32 KB of loads per SM at two blocks per SM, what the copy needs to cover the
// memory latency; 128 threads would halve it), 1, 2 or 4 keys per thread.
template <typename F>
cudaError_t with_fused_shape(int64_t num_tokens, F&& f) {
  if (num_tokens <= 256) return f(SortShape<256, 1>{});
  if (num_tokens <= 512) return f(SortShape<256, 2>{});
  return f(SortShape<256, 4>{});
}

template <int THREADS, int ITEMS, bool FLAGGED, typename Word>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    select_gather_kernel(SelectArgs a, const char* __restrict__ x, int64_t stride_b, int64_t stride_s,
                         Word* __restrict__ y, int64_t prefix, int64_t words_per_row, int64_t split_words,
                         int lanes_log2) {
  // x: byte strides; y [B, P + K, words_per_row] contiguous, in words
  __shared__ SelectShared<THREADS, ITEMS> shared;
  __shared__ uint16_t kept[THREADS * ITEMS];
  const int64_t b = blockIdx.x;
  const bool writer = blockIdx.y == 0;
  const uint64_t seed = a.seed_ptr != nullptr ? static_cast<uint64_t>(*a.seed_ptr) : a.seed;
  select_row<THREADS, ITEMS, FLAGGED>(shared, seed, b, a.num_tokens, a.num_keep, a.ordered, a.always_keep,
                                      a.drop_first, writer ? a.ids : nullptr, writer ? a.inv : nullptr, nullptr,
                                      kept);
  __syncthreads();  // kept[] complete

  const int lanes = 1 << lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t first_word = static_cast<int64_t>(blockIdx.y) * split_words;
  const int64_t words = first_word + split_words <= words_per_row ? split_words : words_per_row - first_word;
  const int64_t rows = prefix + a.num_keep;
  const char* x_sample = x + b * stride_b;
  Word* y_sample = y + b * rows * words_per_row + first_word;
  for (int64_t t = threadIdx.x >> lanes_log2; t < rows; t += THREADS >> lanes_log2) {
    const int64_t s = t < prefix ? t : prefix + kept[t - prefix];
    const Word* in = reinterpret_cast<const Word*>(x_sample + s * stride_s) + first_word;
    detail::copy_row(in, y_sample + t * words_per_row, words, lane, lanes);
  }
}

template <int THREADS, int ITEMS, typename Word>
cudaError_t launch_select_gather(const SelectArgs& a, const char* x, int64_t stride_b, int64_t stride_s, void* y,
                                 int64_t prefix, int64_t row_bytes, cudaStream_t stream) {
  const int64_t words_per_row = row_bytes / static_cast<int64_t>(sizeof(Word));
  // As few splits as give kFusedBlocks blocks, each of at least kFusedMinSplitWords words (one for an empty row)
  const int64_t by_batch = (kFusedBlocks + a.batch_size - 1) / a.batch_size;
  const int64_t wanted = std::max<int64_t>(1, std::min(by_batch, words_per_row / kFusedMinSplitWords));
  const int64_t split_words = (words_per_row + wanted - 1) / wanted;
  const int64_t splits = split_words > 0 ? (words_per_row + split_words - 1) / split_words : 1;
  const int lanes_log2 = detail::copy_lanes_log2(split_words);
  const dim3 grid(static_cast<unsigned int>(a.batch_size), static_cast<unsigned int>(splits));
  Word* out = static_cast<Word*>(y);
  if (a.always_keep.data != nullptr || a.drop_first.data != nullptr) {
    select_gather_kernel<THREADS, ITEMS, true, Word><<<grid, THREADS, 0, stream>>>(
        a, x, stride_b, stride_s, out, prefix, words_per_row, split_words, lanes_log2);
  } else {
    select_gather_kernel<THREADS, ITEMS, false, Word><<<grid, THREADS, 0, stream>>>(
        a, x, stride_b, stride_s, out, prefix, words_per_row, split_words, lanes_log2);
  }
  return cudaGetLastError();
}

inline bool valid_token_sizes(int64_t B, int64_t P, int64_t N, int64_t K, int64_t D) {
  return B >= 0 && P >= 0 && N >= 1 && K >= 1 && K <= N && D >= 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

cudaError_t launch_select_tokens(uint64_t seed, const int64_t* seed_ptr, int64_t batch_size, int64_t num_tokens,
                                 int64_t num_keep, bool ordered, PositionFlags always_keep, PositionFlags drop_first,
                                 int64_t* ids, int32_t* inv, uint8_t* removed, cudaStream_t stream) {
  if (batch_size < 0 || batch_size > INT_MAX || num_tokens < 1 || num_tokens > kMaxSelectTokens || num_keep < 1 ||
      num_keep > num_tokens) {
    return cudaErrorInvalidValue;
  }
  if (batch_size == 0 || (ids == nullptr && inv == nullptr && removed == nullptr)) return cudaSuccess;
  ordered = ordered && ids != nullptr;  // the order of ids only: without them it would cost a scan for nothing
  const SelectArgs a{seed,    seed_ptr,    batch_size, static_cast<int>(num_tokens), static_cast<int>(num_keep),
                     ordered, always_keep, drop_first, ids, inv, removed};
  return with_sort_shape(num_tokens, [&](auto shape) {
    return launch_select<decltype(shape)::threads, decltype(shape)::items>(a, stream);
  });
}

template <typename T, typename IndexT>
cudaError_t launch_gather_tokens(const T* x, int64_t stride_xb, int64_t stride_xs, const IndexT* ids,
                                 int64_t stride_ib, int64_t stride_ik, T* y, int64_t B, int64_t P, int64_t N,
                                 int64_t K, int64_t D, cudaStream_t stream) {
  if (!valid_token_sizes(B, P, N, K, D)) return cudaErrorInvalidValue;
  const int64_t element = static_cast<int64_t>(sizeof(T));
  const GatherRows<IndexT> rows{reinterpret_cast<const char*>(x), stride_xb * element, stride_xs * element,
                                ids, stride_ib, stride_ik, P, N, K};
  const uint64_t alignment = detail::address_bits(x) | static_cast<uint64_t>(rows.stride_b | rows.stride_s);
  return detail::launch_copy_rows(rows, alignment, y, B * (P + K), D * element, stream);
}

template <typename T>
cudaError_t launch_scatter_tokens(const T* grad_y, int64_t stride_gb, int64_t stride_gs, const int32_t* inv,
                                  int64_t stride_vb, int64_t stride_vn, T* grad_x, int64_t B, int64_t P, int64_t N,
                                  int64_t K, int64_t D, cudaStream_t stream) {
  if (!valid_token_sizes(B, P, N, K, D)) return cudaErrorInvalidValue;
  const int64_t element = static_cast<int64_t>(sizeof(T));
  const ScatterRows rows{reinterpret_cast<const char*>(grad_y), stride_gb * element, stride_gs * element,
                         inv, stride_vb, stride_vn, P, N, K};
  const uint64_t alignment = detail::address_bits(grad_y) | static_cast<uint64_t>(rows.stride_b | rows.stride_s);
  return detail::launch_copy_rows(rows, alignment, grad_x, B * (P + N), D * element, stream);
}

template <typename T>
cudaError_t launch_select_gather_tokens(uint64_t seed, const int64_t* seed_ptr, const T* x, int64_t stride_xb,
                                        int64_t stride_xs, T* y, int64_t* ids, int32_t* inv, int64_t B, int64_t P,
                                        int64_t N, int64_t K, int64_t D, bool ordered, PositionFlags always_keep,
                                        PositionFlags drop_first, cudaStream_t stream) {
  if (!valid_token_sizes(B, P, N, K, D) || B > INT_MAX || N > kMaxSelectTokens) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;  // (empty outputs: null data pointers)
  if (ids == nullptr || inv == nullptr) return cudaErrorInvalidValue;
  if (N > kFusedMaxTokens) {  // select, then gather the ids it wrote
    const cudaError_t status =
        launch_select_tokens(seed, seed_ptr, B, N, K, ordered, always_keep, drop_first, ids, inv, nullptr, stream);
    if (status != cudaSuccess) return status;
    return launch_gather_tokens<T, int64_t>(x, stride_xb, stride_xs, ids, K, 1, y, B, P, N, K, D, stream);
  }
  const SelectArgs a{seed,    seed_ptr,    B,          static_cast<int>(N), static_cast<int>(K),
                     ordered, always_keep, drop_first, ids,                 inv,
                     nullptr};
  const int64_t element = static_cast<int64_t>(sizeof(T));
  const int64_t row_bytes = D * element;
  const uint64_t alignment = detail::address_bits(x) | detail::address_bits(y) |
                             static_cast<uint64_t>(stride_xb * element | stride_xs * element | row_bytes);
  const char* source = reinterpret_cast<const char*>(x);
  return with_fused_shape(N, [&](auto shape) {
    return detail::with_copy_word(alignment, [&](auto word) {
      return launch_select_gather<decltype(shape)::threads, decltype(shape)::items, decltype(word)>(
          a, source, stride_xb * element, stride_xs * element, y, P, row_bytes, stream);
    });
  });
}

// One instantiation per float type: the kernels behind them are shared by word size.
#define MASKSUB_INSTANTIATE_TOKEN_OPS(T)                                                                          \
  template cudaError_t launch_gather_tokens<T, int64_t>(const T*, int64_t, int64_t, const int64_t*, int64_t,   \
                                                        int64_t, T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                                        cudaStream_t);                                          \
  template cudaError_t launch_gather_tokens<T, int32_t>(const T*, int64_t, int64_t, const int32_t*, int64_t,   \
                                                        int64_t, T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                                        cudaStream_t);                                          \
  template cudaError_t launch_scatter_tokens<T>(const T*, int64_t, int64_t, const int32_t*, int64_t, int64_t, T*, \
                                                int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);       \
  template cudaError_t launch_select_gather_tokens<T>(uint64_t, const int64_t*, const T*, int64_t, int64_t, T*,    \
                                                      int64_t*, int32_t*, int64_t, int64_t, int64_t, int64_t,      \
                                                      int64_t, bool, PositionFlags, PositionFlags, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_TOKEN_OPS)
#undef MASKSUB_INSTANTIATE_TOKEN_OPS

}  // namespace masksub
