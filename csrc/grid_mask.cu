// Structured grid masks for Swin (tokens + a learnable mask token: ops/token_grid_mask.py) and CNNs (pixels:
// ops/grid_mask.py).
//
// Maths. An H x W map cut into S x S cells, a G_h x G_w grid (G_h = H / S, G_w = W / S), Lc = G_h G_w cells
// numbered row-major; cell_mask[b, i, j] = 1 where cell (i, j) of sample b is removed (launch_select_tokens'
// `removed` output, so the cells kept are exactly random_keep_indices' ids). With M_px[b, h, w] =
// cell_mask[b, h / S, w / S]:
//
//   images  I[B, C, H, W]:  I_out = M_px ? fill : I
//   tokens  T[B, H, W, C]:  T_out = M_px ? m : T          (m = mask token [C])
//           dT = M_px ? 0 : dT_out;   dm[c] = sum over (b, h, w) with M_px = 1 of dT_out[b, h, w, c]
//
// Outputs are selects, so they are bit-exact; removed elements read nothing.
//
// Images and dm walk the map by *cell rows*: a unit u = (b, i) is the S map rows of cell row i of sample b, and
// each thread keeps one column of words for the unit's S rows, so the cell of its column (one division) and its
// address serve S rows; no division per element. Rows are read and written as the widest word (16, 8, 4 or 2
// bytes) dividing the addresses, strides, row and cell sizes, as row_copy.cuh chooses it.
// - Images: NCHW rows are (b, c, h) lines of W elements (a unit holds the C planes of its S rows); channels_last
//   rows are (b, h) lines of W x C contiguous elements (w, c), c fastest, a cell S x C of them. Other strides take
//   element-sized words along the w stride. mask_image_grid_random's launch draws the cells too: each unit ranks
//   its cell row's cells among its sample's Lc Philox keys (the selection kernel's draws and order, no sort),
//   writes their bytes of the cell mask and masks its rows, in one launch (Lc <= kMaskThreads).
// - Token forward with its cells drawn (mask_tokens_grid_random): [B, H, W, C] tokens are a channels_last image
//   batch, masked by the image kernel in one launch with the mask token as the fill of each channel. A given
//   cell mask, token rows that are not contiguous, and dT alone: the row copy of row_copy.cuh (a token = a row of
//   C channels), each row reading the token, the mask token, or nothing (zeros).
// - dm without atomics, the same bits on every run: the B G_h units split into at most kMaxMaskTokenParts
//   contiguous parts (fixed by the shape). One launch writes dT (when wanted) and, per part, one fp32 (fp64 for
//   fp64) partial sum per channel, reading dT_out once; each thread keeps one channel word for the whole part, and
//   the block adds its threads' sums in thread order. A second launch adds the parts of each channel in a fixed
//   tree (one block per channel).
#include <cstdint>
#include <cstring>

#include "dtype.cuh"
#include "masksub_kernels.h"
#include "philox.cuh"
#include "row_copy.cuh"

namespace masksub {
namespace {

constexpr int kMaskThreads = 256;  // threads of every block of this file
// The longest line (W C elements) the launchers take: the kernels' int column counters step k += lanes (at most a
// block's threads) and must not pass INT32_MAX on the way out of their loops.
constexpr int64_t kMaxLine = INT32_MAX - kMaskThreads;
constexpr int kMaskUnroll = 4;     // rows a thread loads before storing them (several words in flight)
constexpr int kWarps = kMaskThreads / 32;
constexpr int kSumSlots = static_cast<int>(kMaxMaskTokenParts / kMaskThreads);  // parts per thread of the last sum
static_assert(kSumSlots * kMaskThreads == kMaxMaskTokenParts, "the final sum loads every part in one go");

// ---------------------------------------------------------------------------------------------------------------
// Shared pieces: the thread layout, the cell row of a unit, the widest word
// ---------------------------------------------------------------------------------------------------------------

// The block's threads as groups of `lanes` (the launcher's choice, <= kMaskThreads): thread t is lane t % lanes of
// row group t / lanes; the kMaskThreads / lanes groups take rows first, first + groups, ... of a unit.
struct ThreadSlot {
  int lane, group, groups;
};

__device__ __forceinline__ ThreadSlot thread_slot(int lanes) {
  const int group = static_cast<int>(threadIdx.x) / lanes;  // once per thread
  return {static_cast<int>(threadIdx.x) - group * lanes, group, kMaskThreads / lanes};
}

struct Unit {  // (sample, cell row) of unit u = b G_h + i (units < 2^31: 32-bit division, checked by the launchers)
  int b, cell_row;
};

__device__ __forceinline__ Unit unit_of(int64_t unit, int grid_h) {
  const int b = static_cast<int>(unit) / grid_h;
  return {b, static_cast<int>(unit) - b * grid_h};
}

// Launches f(Word{}) with the widest word dividing `bits` (the OR of every byte address, stride and size a word
// must divide), never narrower than T (elements are aligned to their size).
template <typename T, typename F>
cudaError_t launch_widest_word(uint64_t bits, F&& f) {
  if ((bits & 15u) == 0) return f(uint4{});
  if constexpr (sizeof(T) <= 8) {
    if (sizeof(T) == 8 || (bits & 7u) == 0) return f(uint2{});
  }
  if constexpr (sizeof(T) <= 4) {
    if (sizeof(T) == 4 || (bits & 3u) == 0) return f(uint32_t{});
  }
  if constexpr (sizeof(T) <= 2) return f(uint16_t{});
  return cudaErrorInvalidValue;  // not reached: every T is 2, 4 or 8 bytes
}

// The stride's bytes where the dimension has more than one index (a size-1 dimension's stride is arbitrary).
inline uint64_t stride_bits(int64_t stride, int64_t size, int64_t element) {
  return size > 1 ? static_cast<uint64_t>(stride * element) : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The cells of a unit drawn in the masking launch (mask_image_grid_random, mask_tokens_grid_random)
// ---------------------------------------------------------------------------------------------------------------

struct CellDraw {
  uint64_t seed;
  const int64_t* seed_ptr;  // the seed on the device (a seed tensor), or null: `seed`
  int num_keep;
  uint8_t* cell_mask;  // [B, G_h, G_w] out
};

// Cell c of sample b is removed when its rank among the sample's keys (draw_j, j), j < Lc, is K or more:
//   rank(c) = #{j : draw_j < draw_c or (draw_j = draw_c and j < c)}
// which is its position in launch_select_tokens' stable sort by draw, so the same cells as that kernel's `removed`.
// The Lc draws go to shared memory (Lc <= kMaskThreads: one per thread), then thread g < G_w counts the keys before
// cell g of the row (every lane of a warp reads the same key: a broadcast). Only ceil(G_w / 32) warps count;
// warp shuffles would be cheaper per cell, but nvcc cannot prove the loop warp-uniform and adds a divergent path.
// Writes the row's G_w bytes; the barrier at the end makes them visible to the whole block.
__device__ __forceinline__ void draw_cell_row(uint64_t seed, Unit unit, int grid_w, int num_cells, int num_keep,
                                              uint32_t* draws, uint8_t* out) {
  for (int j = static_cast<int>(threadIdx.x); j < num_cells; j += kMaskThreads) {
    draws[j] = philox_draw(seed, static_cast<uint64_t>(int64_t{unit.b} * num_cells + j));
  }
  __syncthreads();
  for (int g = static_cast<int>(threadIdx.x); g < grid_w; g += kMaskThreads) {
    const int cell = unit.cell_row * grid_w + g;
    const uint32_t key = draws[cell];
    int before = 0;
    for (int j = 0; j < num_cells; ++j) before += draws[j] < key || (draws[j] == key && j < cell);
    out[g] = before >= num_keep ? 1 : 0;
  }
  __syncthreads();  // the row's bytes are read next by every thread; the draws are rewritten only after this
}

// ---------------------------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------------------------

struct WordStrides {  // strides of an image batch in words: sample, plane (NCHW channel), map row, word of a row
  int64_t b, plane, row, word;
};

template <typename Word>
struct Fill {  // what a removed word becomes: `word` (images), or word k % period of `row` (the mask token)
  Word word;
  const Word* row;
  int period;
  __device__ __forceinline__ Word at(int k) const { return row == nullptr ? word : __ldg(row + k % period); }
};

// y[r] = removed ? fill : x[r] for rows r = first, first + step, ... < count (row strides in words), kMaskUnroll
// rows per trip with the loads before the stores; a removed column reads nothing.
template <typename Word>
__device__ __forceinline__ void mask_rows(const Word* __restrict__ x, int64_t x_stride, Word* __restrict__ y,
                                          int64_t y_stride, int first, int step, int count, bool removed,
                                          const Word& fill) {
  for (int r = first; r < count; r += kMaskUnroll * step) {
    Word values[kMaskUnroll];
#pragma unroll
    for (int u = 0; u < kMaskUnroll; ++u) {
      const int row = r + u * step;
      values[u] = (row < count && !removed) ? __ldg(x + row * x_stride) : fill;
    }
#pragma unroll
    for (int u = 0; u < kMaskUnroll; ++u) {
      const int row = r + u * step;
      if (row < count) y[row * y_stride] = values[u];
    }
  }
}

// Grid-stride over units (b, i): the unit's cell bytes (drawn here when SELECT, else read from `cells`), then each
// thread's word columns k of the unit's rows, in every plane: cell column k / cell_words, S rows of it.
template <typename Word, bool SELECT>
__global__ void __launch_bounds__(kMaskThreads)
    mask_image_kernel(const Word* __restrict__ x, WordStrides xs, Word* __restrict__ y, WordStrides ys,
                      const uint8_t* cells, CellDraw draw, Fill<Word> fill, int64_t units, int grid_h, int grid_w,
                      int planes, int cell_size, int row_words, int cell_words, int lanes) {
  __shared__ uint32_t draws[SELECT ? kMaskThreads : 1];
  const ThreadSlot slot = thread_slot(lanes);
  const int first_word = slot.group < slot.groups ? slot.lane : row_words;  // spare threads copy nothing
  uint64_t seed = 0;
  if (SELECT) seed = draw.seed_ptr != nullptr ? static_cast<uint64_t>(*draw.seed_ptr) : draw.seed;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const Unit unit = unit_of(u, grid_h);
    if (SELECT) draw_cell_row(seed, unit, grid_w, grid_h * grid_w, draw.num_keep, draws, draw.cell_mask + u * grid_w);
    const uint8_t* unit_cells = cells + u * grid_w;  // written above when SELECT: a plain (coherent) load
    const int64_t first_row = int64_t{unit.cell_row} * cell_size;
    const Word* x_unit = x + unit.b * xs.b + first_row * xs.row;
    Word* y_unit = y + unit.b * ys.b + first_row * ys.row;
    for (int k = first_word; k < row_words; k += lanes) {
      const bool removed = unit_cells[k / cell_words] != 0;
      const Word fill_word = fill.at(k);
      for (int plane = 0; plane < planes; ++plane) {
        mask_rows(x_unit + plane * xs.plane + k * xs.word, xs.row, y_unit + plane * ys.plane + k * ys.word, ys.row,
                  slot.group, slot.groups, cell_size, removed, fill_word);
      }
    }
  }
}

template <typename Word, typename T>
Word repeated(T value) {  // a word of copies of `value` (host side)
  unsigned char bytes[sizeof(Word)];
  for (size_t i = 0; i < sizeof(Word); i += sizeof(T)) std::memcpy(bytes + i, &value, sizeof(T));
  Word word;
  std::memcpy(&word, bytes, sizeof(Word));
  return word;
}

// The rows the image kernel walks: channels_last rows ((w, c) contiguous in input and output: W C elements, cells
// of S C) or NCHW rows (W elements along the w stride, cells of S; C planes per unit). Dense rows (channels_last,
// or w stride 1 in both) move as the widest word their addresses allow, other rows one element at a time.
// fill_row (the token masks' mask token [C], or null: `fill`): element c of it fills channel c; the caller passes
// it for dense channels_last rows only (or C = 1), where the channel of a word is its column modulo C.
template <typename T, bool SELECT>
cudaError_t launch_image(const T* x, ImageStrides xs, T* y, ImageStrides ys, const uint8_t* cells,
                         const CellDraw& draw, int64_t B, int64_t C, int64_t H, int64_t W, int64_t S, T fill,
                         const T* fill_row, cudaStream_t stream) {
  const bool channels_last = C > 1 && xs.c == 1 && ys.c == 1 && xs.w == C && ys.w == C;
  const int64_t planes = channels_last ? 1 : C;
  const int64_t row_elements = channels_last ? W * C : W;
  const int64_t cell_elements = channels_last ? S * C : S;
  const int64_t e = static_cast<int64_t>(sizeof(T));
  const bool dense = channels_last || (xs.w == 1 && ys.w == 1);
  uint64_t bits = static_cast<uint64_t>(e);  // strided rows: element words
  if (dense) {
    bits = detail::address_bits(x) | detail::address_bits(y) | static_cast<uint64_t>(row_elements * e) |
           static_cast<uint64_t>(cell_elements * e);
    for (const ImageStrides& s : {xs, ys}) {
      bits |= stride_bits(s.b, B, e) | stride_bits(s.c, planes, e) | stride_bits(s.h, H, e);
    }
  }
  if (fill_row != nullptr) bits |= detail::address_bits(fill_row) | static_cast<uint64_t>(C * e);  // whole tokens
  return launch_widest_word<T>(bits, [&](auto word) {
    using Word = decltype(word);
    const int64_t per_word = static_cast<int64_t>(sizeof(Word)) / e;  // elements per word (1 for strided rows)
    auto strides = [&](const ImageStrides& s) {
      return WordStrides{s.b / per_word, s.c / per_word, s.h / per_word, dense ? 1 : s.w};
    };
    const int64_t row_words = row_elements / per_word;
    const int lanes = static_cast<int>(row_words < kMaskThreads ? row_words : kMaskThreads);
    const int64_t units = B * (H / S);
    const int64_t blocks = units < detail::kMaxGridBlocks ? units : detail::kMaxGridBlocks;
    mask_image_kernel<Word, SELECT><<<static_cast<unsigned int>(blocks), kMaskThreads, 0, stream>>>(
        reinterpret_cast<const Word*>(x), strides(xs), reinterpret_cast<Word*>(y), strides(ys), cells, draw,
        Fill<Word>{repeated<Word>(fill), reinterpret_cast<const Word*>(fill_row), static_cast<int>(C / per_word)}, units, static_cast<int>(H / S), static_cast<int>(W / S), static_cast<int>(planes),
        static_cast<int>(S), static_cast<int>(row_words), static_cast<int>(cell_elements / per_word), lanes);
    return cudaGetLastError();
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens: row sources for row_copy.cuh (a row = one token's C channels) and the mask token's gradient
// ---------------------------------------------------------------------------------------------------------------

struct TokenGrid {  // token row -> (b, h, w) and whether its cell is removed
  const uint8_t* cells;
  int64_t H, W, S;
  __device__ __forceinline__ bool removed(int64_t row, int64_t& b, int64_t& h, int64_t& w) const {
    const int64_t line = row / W;
    w = row - line * W;
    b = line / H;
    h = line - b * H;
    return cells[(b * (H / S) + h / S) * (W / S) + w / S] != 0;
  }
};

struct MaskTokenRows {  // forward: the mask token on removed cells, the token elsewhere
  TokenGrid grid;
  const char* tokens;
  int64_t stride_b, stride_h, stride_w;  // bytes
  const char* mask_token;
  __device__ __forceinline__ const char* operator()(int64_t row) const {
    int64_t b, h, w;
    if (grid.removed(row, b, h, w)) return mask_token;
    return tokens + b * stride_b + h * stride_h + w * stride_w;
  }
};

struct KeptTokenRows {  // backward dT alone: dT_out on kept cells, zeros on removed ones
  TokenGrid grid;
  const char* grad;
  int64_t stride_b, stride_h, stride_w;  // bytes
  __device__ __forceinline__ const char* operator()(int64_t row) const {
    int64_t b, h, w;
    if (grid.removed(row, b, h, w)) return nullptr;
    return grad + b * stride_b + h * stride_h + w * stride_w;
  }
};

struct TokenStrides {  // dT_out's strides in words: sample, token row h, token w (channel words are contiguous)
  int64_t b, h, w;
};

template <typename T, typename Word, typename A, int N>
__device__ __forceinline__ void add_word(A (&acc)[N], const Word& word) {
  static_assert(N * sizeof(T) == sizeof(Word), "one accumulator per element of the word");
  T elements[N];
  memcpy(elements, &word, sizeof(Word));
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] += detail::to_acc<A>(elements[i]);
}

// One channel word of one token over rows first, first + step, ... < count of a unit: dT (when `grad_tokens`) is
// the word, or zeros where removed; a removed word is added to acc, a kept one is read only for dT.
template <typename T, typename Word, typename A, int N>
__device__ __forceinline__ void token_grad_rows(const Word* __restrict__ grad, int64_t grad_stride,
                                                Word* __restrict__ grad_tokens, int64_t out_stride, int first,
                                                int step, int count, bool removed, A (&acc)[N]) {
  const bool read = removed || grad_tokens != nullptr;
  for (int r = first; r < count; r += kMaskUnroll * step) {
    Word values[kMaskUnroll];
#pragma unroll
    for (int u = 0; u < kMaskUnroll; ++u) {
      const int row = r + u * step;
      values[u] = (row < count && read) ? __ldg(grad + row * grad_stride) : Word{};
    }
#pragma unroll
    for (int u = 0; u < kMaskUnroll; ++u) {
      const int row = r + u * step;
      if (row >= count) continue;
      if (grad_tokens != nullptr) grad_tokens[row * out_stride] = removed ? Word{} : values[u];
      if (removed) add_word<T>(acc, values[u]);
    }
  }
}

// Block (part, channel chunk): the units [part * units_per_part, ...) and the channel words [chunk * chunk_words,
// ...) of a token. `lanes` is a multiple of chunk_words, so thread t keeps channel word t % chunk_words of the chunk
// for the whole part: its column k = (w, word) = (k / chunk_words, k % chunk_words) walks the tokens, S rows each.
// partials[c, part] = the part's sum over removed tokens (c-major: a channel's parts are contiguous for the final
// sum), added over the threads of a channel word in thread order.
template <typename T, typename Word>
__global__ void __launch_bounds__(kMaskThreads)
    mask_token_grad_kernel(const Word* __restrict__ grad, TokenStrides gs, const uint8_t* __restrict__ cells,
                           Word* __restrict__ grad_tokens, detail::Acc<T>* __restrict__ partials, int64_t units,
                           int64_t units_per_part, int64_t parts, int grid_h, int grid_w, int cell_size, int W,
                           int token_words, int chunk_words, int lanes) {
  using A = detail::Acc<T>;
  constexpr int kPerWord = static_cast<int>(sizeof(Word) / sizeof(T));
  __shared__ A sums[kMaskThreads][kPerWord];
  const ThreadSlot slot = thread_slot(lanes);
  const int word = static_cast<int>(blockIdx.y) * chunk_words + slot.lane % chunk_words;  // channel word of a token
  const int columns = W * chunk_words;
  const int first = slot.group < slot.groups && word < token_words ? slot.lane : columns;
  const int64_t line_words = int64_t{W} * token_words;  // dT is contiguous
  for (int64_t part = blockIdx.x; part < parts; part += gridDim.x) {
    A acc[kPerWord] = {};
    const int64_t end = (part + 1) * units_per_part < units ? (part + 1) * units_per_part : units;
    for (int64_t u = part * units_per_part; u < end; ++u) {
      const Unit unit = unit_of(u, grid_h);
      const int64_t first_row = int64_t{unit.cell_row} * cell_size;
      const uint8_t* unit_cells = cells + u * grid_w;
      for (int k = first; k < columns; k += lanes) {
        const int w = k / chunk_words;
        const bool removed = unit_cells[w / cell_size] != 0;
        const Word* g = grad + unit.b * gs.b + first_row * gs.h + w * gs.w + word;
        Word* out = grad_tokens == nullptr ? nullptr
                                           : grad_tokens + (int64_t{unit.b} * grid_h * cell_size + first_row) *
                                                               line_words + int64_t{w} * token_words + word;
        token_grad_rows<T>(g, gs.h, out, line_words, slot.group, slot.groups, cell_size, removed, acc);
      }
    }
#pragma unroll
    for (int i = 0; i < kPerWord; ++i) sums[threadIdx.x][i] = acc[i];
    __syncthreads();
    const int own = static_cast<int>(blockIdx.y) * chunk_words + static_cast<int>(threadIdx.x);
    if (static_cast<int>(threadIdx.x) < chunk_words && own < token_words) {
#pragma unroll
      for (int i = 0; i < kPerWord; ++i) {
        A total = sums[threadIdx.x][i];
        for (int t = static_cast<int>(threadIdx.x) + chunk_words; t < slot.groups * lanes; t += chunk_words) {
          total += sums[t][i];
        }
        partials[(int64_t{own} * kPerWord + i) * parts + part] = total;
      }
    }
    __syncthreads();  // sums is rewritten by the next part
  }
}

// grad_mask[c] = sum of partials[c, 0 .. parts), rounded once to T. A block per channel: thread t adds parts t,
// t + kMaskThreads, ... (all loaded at once: parts <= kMaxMaskTokenParts), a butterfly adds a warp's sums, thread
// 0 the kWarps warp sums in order: a fixed tree.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    sum_partials_kernel(const detail::Acc<T>* __restrict__ partials, int64_t parts, int64_t C, T* __restrict__ out) {
  using A = detail::Acc<T>;
  __shared__ A warp_sums[kWarps];
  const int lane = static_cast<int>(threadIdx.x) & 31;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    A values[kSumSlots];
#pragma unroll
    for (int s = 0; s < kSumSlots; ++s) {
      const int64_t p = threadIdx.x + int64_t{s} * kMaskThreads;
      values[s] = p < parts ? partials[c * parts + p] : A(0);
    }
    A total = values[0];
#pragma unroll
    for (int s = 1; s < kSumSlots; ++s) total += values[s];
    for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xFFFFFFFFu, total, offset);
    if (lane == 0) warp_sums[threadIdx.x >> 5] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
      A sum = warp_sums[0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) sum += warp_sums[w];
      out[c] = detail::from_acc<T>(sum);
    }
    __syncthreads();  // warp_sums is rewritten by the next channel
  }
}

template <typename T>
cudaError_t launch_token_grad(const T* grad, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                              const uint8_t* cells, T* grad_tokens, T* grad_mask, detail::Acc<T>* partials, int64_t B,
                              int64_t H, int64_t W, int64_t C, int64_t S, cudaStream_t stream) {
  const int64_t e = static_cast<int64_t>(sizeof(T));
  const int64_t units = B * (H / S);
  const int64_t parts = mask_token_grad_parts(B, H, S);
  const uint64_t bits = detail::address_bits(grad) | detail::address_bits(grad_tokens) |
                        stride_bits(stride_b, B, e) | stride_bits(stride_h, H, e) | stride_bits(stride_w, W, e) |
                        static_cast<uint64_t>(C * e);
  const cudaError_t status = launch_widest_word<T>(bits, [&](auto word) {
    using Word = decltype(word);
    const int64_t per_word = static_cast<int64_t>(sizeof(Word)) / e;
    const int64_t token_words = C / per_word;
    const int64_t chunk_words = token_words < kMaskThreads ? token_words : kMaskThreads;
    // lanes: whole tokens of chunk_words, at most a line's W of them, the remaining threads take more rows
    const int64_t tokens_per_group = kMaskThreads / chunk_words < W ? kMaskThreads / chunk_words : W;
    const dim3 blocks(static_cast<unsigned int>(parts < detail::kMaxGridBlocks ? parts : detail::kMaxGridBlocks),
                      static_cast<unsigned int>((token_words + chunk_words - 1) / chunk_words));
    mask_token_grad_kernel<T, Word><<<blocks, kMaskThreads, 0, stream>>>(
        reinterpret_cast<const Word*>(grad), TokenStrides{stride_b / per_word, stride_h / per_word, stride_w / per_word},
        cells, reinterpret_cast<Word*>(grad_tokens), partials, units, (units + parts - 1) / parts, parts,
        static_cast<int>(H / S), static_cast<int>(W / S), static_cast<int>(S), static_cast<int>(W),
        static_cast<int>(token_words), static_cast<int>(chunk_words), static_cast<int>(tokens_per_group * chunk_words));
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  const int64_t blocks = C < detail::kMaxGridBlocks ? C : detail::kMaxGridBlocks;
  sum_partials_kernel<T><<<static_cast<unsigned int>(blocks), kMaskThreads, 0, stream>>>(partials, parts, C, grad_mask);
  return cudaGetLastError();
}

inline bool valid_grid(int64_t B, int64_t H, int64_t W, int64_t C, int64_t S) {
  return B >= 0 && H >= 0 && W >= 0 && C >= 0 && S >= 1 && H % S == 0 && W % S == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
cudaError_t launch_mask_image_grid(const T* images, ImageStrides image_strides, T* out, ImageStrides out_strides,
                                   const uint8_t* cell_mask, int64_t B, int64_t C, int64_t H, int64_t W, int64_t S,
                                   T fill, cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S) || W * C > kMaxLine || B * H > INT32_MAX) return cudaErrorInvalidValue;
  if (B * C * H * W == 0) return cudaSuccess;
  const CellDraw none{0, nullptr, 0, nullptr};
  return launch_image<T, false>(images, image_strides, out, out_strides, cell_mask, none, B, C, H, W, S, fill,
                                nullptr, stream);
}

template <typename T>
cudaError_t launch_mask_image_grid_random(const T* images, ImageStrides image_strides, T* out,
                                          ImageStrides out_strides, uint8_t* cell_mask, uint64_t seed,
                                          const int64_t* seed_ptr, int64_t num_keep, int64_t B, int64_t C, int64_t H,
                                          int64_t W, int64_t S, T fill, cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S) || W * C > kMaxLine || B * H > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t num_cells = (H / S) * (W / S);
  if (num_cells < 1 || num_keep < 1 || num_keep > num_cells) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  if (num_cells > kMaskThreads || C == 0) {
    // More cells than a block draws at once (or no pixels): the selection kernel's sort, then the masking pass.
    const cudaError_t status = launch_select_tokens(seed, seed_ptr, B, num_cells, num_keep, false, kNoPositionFlags,
                                                    kNoPositionFlags, nullptr, nullptr, cell_mask, stream);
    if (status != cudaSuccess) return status;
    return launch_mask_image_grid(images, image_strides, out, out_strides, cell_mask, B, C, H, W, S, fill, stream);
  }
  const CellDraw draw{seed, seed_ptr, static_cast<int>(num_keep), cell_mask};
  return launch_image<T, true>(images, image_strides, out, out_strides, cell_mask, draw, B, C, H, W, S, fill,
                               nullptr, stream);
}

template <typename T>
cudaError_t launch_mask_tokens_grid_forward(const T* tokens, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                                            const T* mask_token, const uint8_t* cell_mask, T* out, int64_t B,
                                            int64_t H, int64_t W, int64_t C, int64_t S, cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S)) return cudaErrorInvalidValue;
  const int64_t element = static_cast<int64_t>(sizeof(T));
  const MaskTokenRows rows{{cell_mask, H, W, S}, reinterpret_cast<const char*>(tokens), stride_b * element,
                           stride_h * element, stride_w * element, reinterpret_cast<const char*>(mask_token)};
  const uint64_t alignment = detail::address_bits(tokens) | detail::address_bits(mask_token) |
                             static_cast<uint64_t>(rows.stride_b | rows.stride_h | rows.stride_w);
  return detail::launch_copy_rows(rows, alignment, out, B * H * W, C * element, stream);
}

template <typename T>
cudaError_t launch_mask_tokens_grid_random(const T* tokens, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                                           const T* mask_token, uint8_t* cell_mask, uint64_t seed,
                                           const int64_t* seed_ptr, int64_t num_keep, T* out, int64_t B, int64_t H,
                                           int64_t W, int64_t C, int64_t S, cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S) || W * C > kMaxLine || B * H > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t num_cells = (H / S) * (W / S);
  if (num_cells < 1 || num_keep < 1 || num_keep > num_cells) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  if (num_cells > kMaskThreads || C == 0 || (stride_w != C && W > 1)) {
    // More cells than a block draws at once, no channels, or token rows (w, c) that are not contiguous: the
    // selection kernel's sort, then the row copy of launch_mask_tokens_grid_forward.
    const cudaError_t status = launch_select_tokens(seed, seed_ptr, B, num_cells, num_keep, false, kNoPositionFlags,
                                                    kNoPositionFlags, nullptr, nullptr, cell_mask, stream);
    if (status != cudaSuccess) return status;
    return launch_mask_tokens_grid_forward(tokens, stride_b, stride_h, stride_w, mask_token, cell_mask, out, B, H, W,
                                           C, S, stream);
  }
  // [B, H, W, C] tokens are a channels_last image batch [B, C, H, W]: rows of W x C contiguous elements (w, c),
  // cells of S x C, removed words filled from the mask token; the output is contiguous.
  const CellDraw draw{seed, seed_ptr, static_cast<int>(num_keep), cell_mask};
  return launch_image<T, true>(tokens, ImageStrides{stride_b, 1, stride_h, C}, out,
                               ImageStrides{H * W * C, 1, W * C, C}, cell_mask, draw, B, C, H, W, S, T{}, mask_token,
                               stream);
}

template <typename T>
cudaError_t launch_mask_tokens_grid_backward(const T* grad_out, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                                             const uint8_t* cell_mask, T* grad_tokens, T* grad_mask, void* partials,
                                             int64_t B, int64_t H, int64_t W, int64_t C, int64_t S,
                                             cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S) || B * H > INT32_MAX || W * C > kMaxLine) return cudaErrorInvalidValue;
  if (grad_mask != nullptr && C > 0) {  // dm (and dT, when wanted) in one pass over dT_out, then the final sum
    if ((mask_token_grad_parts(B, H, S) > 0 && partials == nullptr) || C > int64_t{65535} * kMaskThreads) {
      return cudaErrorInvalidValue;  // channel chunks of up to kMaskThreads words on grid.y (<= 65535)
    }
    if (B * H * W == 0) {  // no token: dm = 0, the sum of no part
      sum_partials_kernel<T><<<static_cast<unsigned int>(C < detail::kMaxGridBlocks ? C : detail::kMaxGridBlocks),
                               kMaskThreads, 0, stream>>>(nullptr, 0, C, grad_mask);
      return cudaGetLastError();
    }
    return launch_token_grad(grad_out, stride_b, stride_h, stride_w, cell_mask, grad_tokens, grad_mask,
                             static_cast<detail::Acc<T>*>(partials), B, H, W, C, S, stream);
  }
  if (grad_tokens == nullptr) return cudaSuccess;
  const int64_t element = static_cast<int64_t>(sizeof(T));
  const KeptTokenRows rows{{cell_mask, H, W, S}, reinterpret_cast<const char*>(grad_out), stride_b * element,
                           stride_h * element, stride_w * element};
  const uint64_t alignment =
      detail::address_bits(grad_out) | static_cast<uint64_t>(rows.stride_b | rows.stride_h | rows.stride_w);
  return detail::launch_copy_rows(rows, alignment, grad_tokens, B * H * W, C * element, stream);
}

#define MASKSUB_INSTANTIATE_GRID_OPS(T)                                                                            \
  template cudaError_t launch_mask_image_grid<T>(const T*, ImageStrides, T*, ImageStrides, const uint8_t*,        \
                                                 int64_t, int64_t, int64_t, int64_t, int64_t, T, cudaStream_t);   \
  template cudaError_t launch_mask_image_grid_random<T>(const T*, ImageStrides, T*, ImageStrides, uint8_t*,       \
                                                        uint64_t, const int64_t*, int64_t, int64_t, int64_t,      \
                                                        int64_t, int64_t, int64_t, T, cudaStream_t);              \
  template cudaError_t launch_mask_tokens_grid_forward<T>(const T*, int64_t, int64_t, int64_t, const T*,         \
                                                          const uint8_t*, T*, int64_t, int64_t, int64_t, int64_t, \
                                                          int64_t, cudaStream_t);                                 \
  template cudaError_t launch_mask_tokens_grid_random<T>(const T*, int64_t, int64_t, int64_t, const T*, uint8_t*, \
                                                         uint64_t, const int64_t*, int64_t, T*, int64_t, int64_t,  \
                                                         int64_t, int64_t, int64_t, cudaStream_t);                 \
  template cudaError_t launch_mask_tokens_grid_backward<T>(const T*, int64_t, int64_t, int64_t, const uint8_t*,  \
                                                           T*, T*, void*, int64_t, int64_t, int64_t, int64_t,     \
                                                           int64_t, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_GRID_OPS)
#undef MASKSUB_INSTANTIATE_GRID_OPS

}  // namespace masksub
