// Structured grid masks for Swin (tokens + a learnable mask token: ops/token_grid_mask.py) and CNNs (pixels:
// ops/grid_mask.py).
//
// Maths. An H x W map cut into S x S cells, a G_h x G_w grid (G_h = H / S, G_w = W / S), cells numbered row-major;
// cell_mask[b, i, j] = 1 where cell (i, j) of sample b is removed (launch_select_tokens' `removed` output, so the
// cells kept are exactly random_keep_indices' ids). With M_px[b, h, w] = cell_mask[b, h / S, w / S]:
//
//   images  I[B, C, H, W]:  I_out = M_px ? fill : I
//   tokens  T[B, H, W, C]:  T_out = M_px ? m : T          (m = mask token [C])
//           dT = M_px ? 0 : dT_out;   dm[c] = sum over (b, h, w) with M_px = 1 of dT_out[b, h, w, c]
//
// Outputs are selects, so they are bit-exact; removed elements read nothing.
// - Images: one group of threads per line of the output's layout, so stores are coalesced: an NCHW line is
//   (b, c, h) with W columns; a channels_last line is (b, h) with W * C columns (w, c), c fastest. One cell byte
//   per element (cached); input and output strides are independent (output = torch.empty_like(input)).
// - Token forward and dT: the row copy of row_copy.cuh (a token = a row of C channels), each row reading the
//   token, the mask token, or nothing (zeros).
// - dm without atomics, the same bits on every run: pass 1 splits the B*H*W tokens into at most
//   kMaxMaskTokenParts contiguous parts (fixed by the shape) and writes one partial sum per (part, channel), in
//   fp32 (fp64 for fp64), reading only removed tokens; pass 2 adds the parts of each channel in order. dT reads
//   only kept tokens, so both gradients together read dT_out once.
#include <cstdint>

#include "dtype.cuh"
#include "masksub_kernels.h"
#include "row_copy.cuh"

namespace masksub {
namespace {

constexpr int kImageThreads = 256;
constexpr int kPartChannels = 32;  // threads of a partial-sum block along the channels (coalesced loads)
constexpr int kPartRows = 8;       // ... and along the tokens

// ---------------------------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------------------------

template <typename T, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kImageThreads)
    mask_image_kernel(const T* __restrict__ x, ImageStrides xs, T* __restrict__ y, ImageStrides ys,
                      const uint8_t* __restrict__ cells, int64_t lines, int C, int H, int W, int S, int lanes_log2,
                      T fill) {
  const int lanes = 1 << lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t lines_per_block = kImageThreads >> lanes_log2;
  const int columns = CHANNELS_LAST ? W * C : W;
  const int grid_h = H / S, grid_w = W / S;
  for (int64_t line = blockIdx.x * lines_per_block + (threadIdx.x >> lanes_log2); line < lines;
       line += static_cast<int64_t>(gridDim.x) * lines_per_block) {
    // 32-bit divisions (lines < 2^31, checked by the launcher): the 64-bit one is a call, and spilled on sm_80
    const int outer = static_cast<int>(line) / H;  // (b, c) of an NCHW line, b of a channels_last one
    const int h = static_cast<int>(line) - outer * H;
    int64_t b = outer, c = 0;
    if (!CHANNELS_LAST) {
      b = outer / C;
      c = outer - b * C;
    }
    const uint8_t* cell_row = cells + (b * grid_h + h / S) * grid_w;
    const int64_t x_line = b * xs.b + c * xs.c + h * xs.h;
    const int64_t y_line = b * ys.b + c * ys.c + h * ys.h;
    // Column k = (w, channel): channels_last steps (w, channel) by `lanes` columns with a carry instead of
    // dividing k by C per element (two divisions per element spilled on sm_80).
    int w = lane, channel = 0, step_w = lanes, step_c = 0;
    if (CHANNELS_LAST) {
      w = lane / C;
      channel = lane - w * C;
      step_w = lanes / C;
      step_c = lanes - step_w * C;
    }
    for (int k = lane; k < columns; k += lanes) {
      const bool removed = cell_row[w / S] != 0;
      const T value = removed ? fill : x[x_line + w * xs.w + channel * xs.c];
      y[y_line + w * ys.w + channel * ys.c] = value;
      w += step_w;
      if (CHANNELS_LAST) {
        channel += step_c;
        if (channel >= C) {
          channel -= C;
          ++w;
        }
      }
    }
  }
}

template <typename T, bool CHANNELS_LAST>
cudaError_t launch_image(const T* x, ImageStrides xs, T* y, ImageStrides ys, const uint8_t* cells, int64_t B,
                         int64_t C, int64_t H, int64_t W, int64_t S, T fill, cudaStream_t stream) {
  const int64_t columns = CHANNELS_LAST ? W * C : W;
  const int64_t lines = CHANNELS_LAST ? B * H : B * C * H;
  int lanes_log2 = 0;  // threads per line: the columns rounded up to a power of two, at most the block
  while ((int64_t{1} << lanes_log2) < columns && (1 << lanes_log2) < kImageThreads) ++lanes_log2;
  const int64_t lines_per_block = kImageThreads >> lanes_log2;
  int64_t blocks = (lines + lines_per_block - 1) / lines_per_block;
  if (blocks > detail::kMaxGridBlocks) blocks = detail::kMaxGridBlocks;
  mask_image_kernel<T, CHANNELS_LAST><<<static_cast<unsigned int>(blocks), kImageThreads, 0, stream>>>(
      x, xs, y, ys, cells, lines, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), static_cast<int>(S),
      lanes_log2, fill);
  return cudaGetLastError();
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

struct KeptTokenRows {  // backward dT: dT_out on kept cells, zeros on removed ones
  TokenGrid grid;
  const char* grad;
  int64_t stride_b, stride_h, stride_w;  // bytes
  __device__ __forceinline__ const char* operator()(int64_t row) const {
    int64_t b, h, w;
    if (grid.removed(row, b, h, w)) return nullptr;
    return grad + b * stride_b + h * stride_h + w * stride_w;
  }
};

// partials[part, c] = sum of grad[token, c] over the removed tokens of part (tokens [part * per_part, ...)).
// Block (kPartChannels x kPartRows): x along channels, y along tokens; the kPartRows sums are added in order.
template <typename T>
__global__ void __launch_bounds__(kPartChannels* kPartRows)
    mask_token_partials_kernel(const T* __restrict__ grad, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                               TokenGrid grid, detail::Acc<T>* __restrict__ partials, int64_t tokens,
                               int64_t tokens_per_part, int64_t C) {
  using A = detail::Acc<T>;
  __shared__ A sums[kPartRows][kPartChannels];
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kPartChannels + threadIdx.x;
  const int64_t part = blockIdx.x;
  const int64_t first = part * tokens_per_part;
  const int64_t last = first + tokens_per_part < tokens ? first + tokens_per_part : tokens;
  A acc = A(0);
  int64_t t = first + threadIdx.y;
  if (t < last && c < C) {
    // (b, h, w) of token t from one division, then stepped by kPartRows tokens (no 64-bit division per token)
    int64_t b, h, w;
    grid.removed(t, b, h, w);
    const int64_t grid_w = grid.W / grid.S;
    const uint8_t* cell_row = grid.cells + (b * (grid.H / grid.S) + h / grid.S) * grid_w;
    for (; t < last; t += kPartRows) {
      if (cell_row[w / grid.S] != 0) acc += detail::to_acc<A>(grad[b * stride_b + h * stride_h + w * stride_w + c]);
      for (w += kPartRows; w >= grid.W; w -= grid.W) {  // next token: carry into h, then b
        if (++h == grid.H) {
          h = 0;
          ++b;
        }
        cell_row = grid.cells + (b * (grid.H / grid.S) + h / grid.S) * grid_w;
      }
    }
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    A total = sums[0][threadIdx.x];
#pragma unroll
    for (int r = 1; r < kPartRows; ++r) total += sums[r][threadIdx.x];
    partials[part * C + c] = total;
  }
}

// grad_mask[c] = sum over parts p (in order) of partials[p, c], rounded once to T.
template <typename T>
__global__ void __launch_bounds__(256)
    sum_partials_kernel(const detail::Acc<T>* __restrict__ partials, int64_t parts, int64_t C, T* __restrict__ out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  detail::Acc<T> total = 0;
  for (int64_t p = 0; p < parts; ++p) total += partials[p * C + c];
  out[c] = detail::from_acc<T>(total);
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
  if (!valid_grid(B, H, W, C, S) || W * C > INT32_MAX || B * C * H > INT32_MAX) return cudaErrorInvalidValue;
  if (B * C * H * W == 0) return cudaSuccess;
  // Walk the output's layout: channels_last when its channel stride is 1 (and C > 1), NCHW-like otherwise.
  if (out_strides.c == 1 && C > 1) {
    return launch_image<T, true>(images, image_strides, out, out_strides, cell_mask, B, C, H, W, S, fill, stream);
  }
  return launch_image<T, false>(images, image_strides, out, out_strides, cell_mask, B, C, H, W, S, fill, stream);
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
cudaError_t launch_mask_tokens_grid_backward(const T* grad_out, int64_t stride_b, int64_t stride_h, int64_t stride_w,
                                             const uint8_t* cell_mask, T* grad_tokens, T* grad_mask, void* partials,
                                             int64_t B, int64_t H, int64_t W, int64_t C, int64_t S,
                                             cudaStream_t stream) {
  if (!valid_grid(B, H, W, C, S)) return cudaErrorInvalidValue;
  const TokenGrid grid{cell_mask, H, W, S};
  const int64_t tokens = B * H * W;
  if (grad_tokens != nullptr) {
    const int64_t element = static_cast<int64_t>(sizeof(T));
    const KeptTokenRows rows{grid, reinterpret_cast<const char*>(grad_out), stride_b * element, stride_h * element,
                             stride_w * element};
    const uint64_t alignment =
        detail::address_bits(grad_out) | static_cast<uint64_t>(rows.stride_b | rows.stride_h | rows.stride_w);
    const cudaError_t status = detail::launch_copy_rows(rows, alignment, grad_tokens, tokens, C * element, stream);
    if (status != cudaSuccess) return status;
  }
  if (grad_mask == nullptr || C == 0) return cudaSuccess;
  const int64_t parts = mask_token_grad_parts(tokens);
  if ((parts > 0 && partials == nullptr) || C > int64_t{65535} * kPartChannels) return cudaErrorInvalidValue;
  auto* sums = static_cast<detail::Acc<T>*>(partials);
  if (parts > 0) {
    const int64_t per_part = (tokens + parts - 1) / parts;
    const dim3 blocks(static_cast<unsigned int>(parts),
                      static_cast<unsigned int>((C + kPartChannels - 1) / kPartChannels));
    mask_token_partials_kernel<T><<<blocks, dim3(kPartChannels, kPartRows), 0, stream>>>(
        grad_out, stride_b, stride_h, stride_w, grid, sums, tokens, per_part, C);
  }
  sum_partials_kernel<T><<<static_cast<unsigned int>((C + 255) / 256), 256, 0, stream>>>(sums, parts, C, grad_mask);
  return cudaGetLastError();
}

#define MASKSUB_INSTANTIATE_GRID_OPS(T)                                                                            \
  template cudaError_t launch_mask_image_grid<T>(const T*, ImageStrides, T*, ImageStrides, const uint8_t*,        \
                                                 int64_t, int64_t, int64_t, int64_t, int64_t, T, cudaStream_t);   \
  template cudaError_t launch_mask_tokens_grid_forward<T>(const T*, int64_t, int64_t, int64_t, const T*,         \
                                                          const uint8_t*, T*, int64_t, int64_t, int64_t, int64_t, \
                                                          int64_t, cudaStream_t);                                 \
  template cudaError_t launch_mask_tokens_grid_backward<T>(const T*, int64_t, int64_t, int64_t, const uint8_t*,  \
                                                           T*, T*, void*, int64_t, int64_t, int64_t, int64_t,     \
                                                           int64_t, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_GRID_OPS)
#undef MASKSUB_INSTANTIATE_GRID_OPS

}  // namespace masksub
