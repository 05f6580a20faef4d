// masksub_kernels: the torch-free launcher API of the CUDA kernels (csrc/*.cu), used by the bindings (csrc/bindings*.cpp).
//
// Conventions shared by every launcher:
//   - raw device pointers, sizes and strides in elements as int64 (index arithmetic never overflows 32 bits);
//   - work is enqueued on `stream` and never synchronised; the return value is the launch status
//     (cudaGetLastError() after the launch, or cudaErrorInvalidValue for arguments the kernels cannot take);
//   - an empty problem (a zero size) launches nothing and returns cudaSuccess;
//   - float kernels are templates over T in MASKSUB_FLOAT_TYPES, explicitly instantiated in their .cu file, so
//     that the binding's one dispatch helper (dispatch_float in bindings.h) reaches every dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// X-macro over the float element types every float kernel is instantiated for: fp32, fp16, bf16, fp64.
#define MASKSUB_FLOAT_TYPES(X) X(float) X(__half) X(__nv_bfloat16) X(double)

namespace masksub {

// ---------------------------------------------------------------------------------------------------------------
// Token select / gather / scatter (masksub_kernels/ops/token_select.py; csrc/token_select.cu)
// ---------------------------------------------------------------------------------------------------------------

// Largest number of tokens one sample's sort handles (one thread block per sample).
constexpr int64_t kMaxSelectTokens = 8192;

// An optional per-position flag of a selection: bytes (a torch.bool tensor's, nonzero = set), element (b, n) at
// data[b * stride_b + n * stride_n] (strides in elements, any); data null: no flag set anywhere.
struct PositionFlags {
  const uint8_t* data;
  int64_t stride_b;
  int64_t stride_n;
};
constexpr PositionFlags kNoPositionFlags{nullptr, 0, 0};

// Per sample b < batch_size: draw[b, n] = Philox4x32-10(seed, b * num_tokens + n) for n < num_tokens (the layout
// of masksub_kernels/_philox.py), sort the draws ascending with ties by position, keep the first num_keep.
// With always_keep / drop_first (either may be absent), positions sort in three classes, each ascending:
// always-keep positions by position, then the other positions by (draw, position), then drop-first positions
// (those not always-keep) by position; a row with more than num_keep always-keep positions keeps the lowest.
//   ids [batch_size, num_keep] (contiguous): kept positions in ascending-key order, or ascending position when
//                                            `ordered`;
//   inv [batch_size, num_tokens] (contiguous): inv[b, ids[b, j]] = j, -1 for dropped positions;
//   removed [batch_size, num_tokens] (contiguous bytes): 1 for a dropped position, 0 for a kept one (the grid
//                                     masks' cell mask, a torch.bool tensor's bytes).
// Every output may be null (none: nothing is launched). Requires 1 <= num_keep <= num_tokens <= kMaxSelectTokens
// and batch_size < 2^31. The Philox key is *seed_ptr (one int64, read on the device) when seed_ptr is not null,
// else seed.
cudaError_t launch_select_tokens(uint64_t seed,
                                 const int64_t* seed_ptr,
                                 int64_t batch_size,
                                 int64_t num_tokens,
                                 int64_t num_keep,
                                 bool ordered,
                                 PositionFlags always_keep,
                                 PositionFlags drop_first,
                                 int64_t* ids,
                                 int32_t* inv,
                                 uint8_t* removed,
                                 cudaStream_t stream);

// y[b, j] = x[b, j] for j < P; y[b, P + j] = x[b, P + ids[b, j]] for j < K (zeros where an id is outside [0, N)).
//   x [B, P+N, D]: element (b, s, d) at x[b * stride_xb + s * stride_xs + d] (last stride 1);
//   ids [B, K] int64 or int32: element (b, j) at ids[b * stride_ib + j * stride_ik];
//   y [B, P+K, D] contiguous.
template <typename T, typename IndexT>
cudaError_t launch_gather_tokens(const T* x,
                                 int64_t stride_xb,
                                 int64_t stride_xs,
                                 const IndexT* ids,
                                 int64_t stride_ib,
                                 int64_t stride_ik,
                                 T* y,
                                 int64_t B,
                                 int64_t P,
                                 int64_t N,
                                 int64_t K,
                                 int64_t D,
                                 cudaStream_t stream);

// launch_select_tokens (ids and inv, both required) followed by launch_gather_tokens of those ids into y, in one
// launch where N <= 1024 (each block selects its sample's tokens and copies its rows), two above.
//   x [B, P+N, D]: element (b, s, d) at x[b * stride_xb + s * stride_xs + d] (last stride 1);
//   y [B, P+K, D], ids [B, K] int64, inv [B, N] int32, all contiguous.
template <typename T>
cudaError_t launch_select_gather_tokens(uint64_t seed,
                                        const int64_t* seed_ptr,
                                        const T* x,
                                        int64_t stride_xb,
                                        int64_t stride_xs,
                                        T* y,
                                        int64_t* ids,
                                        int32_t* inv,
                                        int64_t B,
                                        int64_t P,
                                        int64_t N,
                                        int64_t K,
                                        int64_t D,
                                        bool ordered,
                                        PositionFlags always_keep,
                                        PositionFlags drop_first,
                                        cudaStream_t stream);

// The gather's backward without atomics, each element of grad_x written once:
// grad_x[b, t] = grad_y[b, t] for t < P; grad_x[b, P + n] = grad_y[b, P + inv[b, n]] when 0 <= inv[b, n] < K,
// 0 otherwise.
//   grad_y [B, P+K, D]: element (b, s, d) at grad_y[b * stride_gb + s * stride_gs + d] (last stride 1);
//   inv [B, N] int32: element (b, n) at inv[b * stride_vb + n * stride_vn];
//   grad_x [B, P+N, D] contiguous.
template <typename T>
cudaError_t launch_scatter_tokens(const T* grad_y,
                                  int64_t stride_gb,
                                  int64_t stride_gs,
                                  const int32_t* inv,
                                  int64_t stride_vb,
                                  int64_t stride_vn,
                                  T* grad_x,
                                  int64_t B,
                                  int64_t P,
                                  int64_t N,
                                  int64_t K,
                                  int64_t D,
                                  cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Grid masks (masksub_kernels/ops/grid_mask.py; csrc/grid_mask.cu). The cell mask of a sample comes from
// launch_select_tokens(seed, seed_ptr, B, G_h * G_w, Kc, ..., removed = cell_mask), without position flags.
// cell_mask: bytes [B, G_h, G_w], contiguous, 1 = removed, with G_h = H / S and G_w = W / S (S = cell size; H and W
// multiples of S).
// ---------------------------------------------------------------------------------------------------------------

struct ImageStrides {  // element strides of an image batch [B, C, H, W]
  int64_t b, c, h, w;
};

// out[b, c, h, w] = fill if cell_mask[b, h / S, w / S] else images[b, c, h, w]; any strides for both.
template <typename T>
cudaError_t launch_mask_image_grid(const T* images,
                                   ImageStrides image_strides,
                                   T* out,
                                   ImageStrides out_strides,
                                   const uint8_t* cell_mask,
                                   int64_t B,
                                   int64_t C,
                                   int64_t H,
                                   int64_t W,
                                   int64_t S,
                                   T fill,
                                   cudaStream_t stream);

// The cell mask and the masked images at once: cell_mask [B, G_h, G_w] (out) = launch_select_tokens(seed,
// seed_ptr, B, G_h * G_w, num_keep, ..., removed = cell_mask)'s bytes, and out as launch_mask_image_grid with it.
// One launch up to 256 cells per sample (each block draws its cell row's cells), else the selection, then the masking.
template <typename T>
cudaError_t launch_mask_image_grid_random(const T* images,
                                          ImageStrides image_strides,
                                          T* out,
                                          ImageStrides out_strides,
                                          uint8_t* cell_mask,
                                          uint64_t seed,
                                          const int64_t* seed_ptr,
                                          int64_t num_keep,
                                          int64_t B,
                                          int64_t C,
                                          int64_t H,
                                          int64_t W,
                                          int64_t S,
                                          T fill,
                                          cudaStream_t stream);

// out [B, H, W, C] contiguous = mask_token [C] on removed cells, tokens elsewhere; tokens: element (b, h, w, c) at
// tokens[b * stride_b + h * stride_h + w * stride_w + c] (channel stride 1).
template <typename T>
cudaError_t launch_mask_tokens_grid_forward(const T* tokens,
                                            int64_t stride_b,
                                            int64_t stride_h,
                                            int64_t stride_w,
                                            const T* mask_token,
                                            const uint8_t* cell_mask,
                                            T* out,
                                            int64_t B,
                                            int64_t H,
                                            int64_t W,
                                            int64_t C,
                                            int64_t S,
                                            cudaStream_t stream);

// The cell mask and the masked tokens at once: cell_mask [B, G_h, G_w] (out) = launch_select_tokens(seed, seed_ptr,
// B, G_h * G_w, num_keep, ..., removed = cell_mask)'s bytes, and out as launch_mask_tokens_grid_forward with it.
// One launch up to 256 cells per sample when each token row (w, c) is contiguous (stride_w = C), else two.
template <typename T>
cudaError_t launch_mask_tokens_grid_random(const T* tokens,
                                           int64_t stride_b,
                                           int64_t stride_h,
                                           int64_t stride_w,
                                           const T* mask_token,
                                           uint8_t* cell_mask,
                                           uint64_t seed,
                                           const int64_t* seed_ptr,
                                           int64_t num_keep,
                                           T* out,
                                           int64_t B,
                                           int64_t H,
                                           int64_t W,
                                           int64_t C,
                                           int64_t S,
                                           cudaStream_t stream);

// Partial sums of the mask token's gradient: the B * (H / S) cell rows (S token rows each) split into this many
// contiguous parts (fixed by the shape).
constexpr int64_t kMaxMaskTokenParts = 1024;
inline int64_t mask_token_grad_parts(int64_t B, int64_t H, int64_t S) {
  const int64_t cell_rows = S >= 1 ? B * (H / S) : 0;
  if (cell_rows <= 0) return 0;
  const int64_t per_part = (cell_rows + kMaxMaskTokenParts - 1) / kMaxMaskTokenParts;
  return (cell_rows + per_part - 1) / per_part;
}

// grad_tokens [B, H, W, C] contiguous (null: not wanted) = 0 on removed cells, grad_out elsewhere;
// grad_mask [C] (null: not wanted) = sum of grad_out over removed tokens, accumulated in fp32 (fp64 for double) in
// a fixed order: `partials` is a workspace of C x mask_token_grad_parts(B, H, S) accumulators (float, or double
// for T = double). grad_out: element (b, h, w, c) at grad_out[b * stride_b + h * stride_h + w * stride_w + c].
template <typename T>
cudaError_t launch_mask_tokens_grid_backward(const T* grad_out,
                                             int64_t stride_b,
                                             int64_t stride_h,
                                             int64_t stride_w,
                                             const uint8_t* cell_mask,
                                             T* grad_tokens,
                                             T* grad_mask,
                                             void* partials,
                                             int64_t B,
                                             int64_t H,
                                             int64_t W,
                                             int64_t C,
                                             int64_t S,
                                             cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// MaskSub loss (masksub_kernels/ops/masksub_loss.py; csrc/masksub_loss.cu): per row of the main logits z and the
// sub logits s [M, C], the main criterion against the target and the sub criterion against the detached
// softmax/sigmoid of z / T, in one pass over the classes; the backward recomputes from the saved fp32 stats.
// ---------------------------------------------------------------------------------------------------------------

// How the target is given: none (no main term), class ids [M] (int64 or int32), or probabilities [M, C].
enum class TargetKind : int32_t { kNone, kLabelsInt64, kLabelsInt32, kFloat32, kFloat16, kBFloat16, kFloat64 };

// Rows of the forward's fp32 [9, M] output: both per-row losses, then the CE stats the backward reads.
enum LossRow : int { kLossMain, kLossSub, kStatShiftZ, kStatLogSumZ, kStatMassZ, kStatShiftS, kStatLogSumS,
                     kStatShiftT, kStatLogSumT, kLossRows };

struct LossProblem {
  int64_t rows, classes;
  int64_t stride_logits;       // row stride of the logits (their class stride is 1), in elements
  const void* sub_logits;      // the logits' dtype, class stride 1; null: no sub term
  int64_t stride_sub;
  const void* target;          // class ids or probabilities (class stride 1; in T or fp32), as target_kind says
  int64_t stride_target;       // row stride of the probabilities, or the stride of the class ids
  TargetKind target_kind;
  bool bce;                    // binary cross-entropy (per class, sigmoid) instead of softmax cross-entropy
  bool binarise;               // q := [q > threshold] before the smoothing (BCE only)
  float label_smoothing;       // w = (1 - eps) q + eps / C
  float temperature;           // T of the sub term (its loss carries T^2, its gradient T)
  float threshold;
  int64_t ignore_index;        // class-id rows equal to it count in neither term
};

// out [kLossRows, M] fp32, every entry written: per-row losses (0 on ignored rows and for absent terms) and, for
// CE, the stats (0 for BCE and absent terms). Arithmetic in fp32 (fp64 logits too).
// Few rows (M = 8, C = 128256): each row over masksub_loss_forward_splits() blocks, which then need workspace, fp32
// [rows, splits, kLossStateWords] (any contents), and tickets, int32 [rows] zeroed (null for one split).
// reduce (null: per-row losses only): the reduced loss in the same launch (ops/masksub_loss_reduced.py): each
// row's block counts its row in `tickets` (int32 [2], zeroed: rows done, rows that count) once the row is stored;
// the last sums the rows in a fixed order.
constexpr int kLossStateWords = 13;
struct LossReduction {
  float* reduced;  // fp32 [4]: (a main + b sub, main, sub, d), main = sum of the rows' main losses / d (sub alike)
  float* divisor;  // fp32 [1]: d = max(rows that count, 1) for a mean (class ids != ignore_index), 1 for a sum
  int32_t* tickets;
  float main_weight, sub_weight;  // a, b
  bool mean;
};
template <typename T>
int64_t masksub_loss_forward_splits(const LossProblem& problem);
template <typename T>
cudaError_t launch_masksub_loss_forward(const T* logits, const LossProblem& problem, float* out, float* workspace,
                                        int32_t* tickets, const LossReduction* reduce, cudaStream_t stream);

// grad_logits [M, C] contiguous (null: not wanted) = grad_main[r] * d main_r / d z, grad_sub_logits likewise with
// grad_sub; grad_main / grad_sub: fp32 [M] with a stride (0 for a broadcast scalar). out: the forward's output.
// reduced (null: per-row gradients): grad_main and grad_sub are the gradient g [4] (with its stride) of the reduced
// loss, each row's gradients (a g_0 + g_1) / d and (b g_0 + g_2) / d, d the reduced forward's divisor.
struct LossReducedGrad {
  const float* divisor;  // fp32 [1]
  float main_weight, sub_weight;
};
template <typename T>
cudaError_t launch_masksub_loss_backward(const T* logits,
                                         const LossProblem& problem,
                                         const float* out,
                                         const float* grad_main,
                                         int64_t stride_grad_main,
                                         const float* grad_sub,
                                         int64_t stride_grad_sub,
                                         T* grad_logits,
                                         T* grad_sub_logits,
                                         const LossReducedGrad* reduced,
                                         cudaStream_t stream);

}  // namespace masksub
