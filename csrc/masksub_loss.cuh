// The MaskSub loss's kernels, shared by the forward (masksub_loss.cu) and the backward (masksub_loss_backward.cu):
// the maths, the launch variants, the per-element helpers and how a row is read. Included by those two files only.
//
// The MaskSub loss: main criterion + self-distillation of the sub branch in one pass (ops/masksub_loss.py).
//
// Maths, row r of the main logits z and sub logits s [M, C]; target q (one-hot of a class id, or probabilities),
// binarised (q := [q > threshold]) when asked, then smoothed: w = (1 - eps) q + eps / C.
//   CE  main:  l = sum_c -w_c log_softmax(z)_c = S log L_z - D_z                       dl/dz = S softmax(z) - w
//   BCE main:  l = mean_c softplus(z_c) - w_c z_c                                      dl/dz = (sigmoid(z) - w) / C
//   CE  sub:   l = T^2 sum_c -p_c log_softmax(s/T)_c,  p = softmax(z/T) (detached)    dl/ds = T (softmax(s/T) - p)
//   BCE sub:   l = T^2 mean_c softplus(s_c/T) - p_c s_c/T,  p = sigmoid(z/T)          dl/ds = T (sigmoid(s/T) - p) / C
// with the CE row kept in shifted form: m = max z, c = shift(m) (m, or 0 while the row is all -inf),
// L_z = sum exp(z - c), S = sum w, D_z = sum w (z - c) over w != 0 (so -inf logits without mass stay finite);
// the sub term keeps (m_s, L_s) for x = s/T, (m_t, L_t) for z/T and D_t = sum exp(z/T - c_t) (x - c_s), so that
// sub = log L_s - D_t / L_t. No lse - z cancellation: every term is >= 0. Classes with x = -inf stay out of D_t:
// m_ninf, the largest teacher logit z/T among them, makes D_t -inf at the row's end only where that class's fp32
// probability e^(m_ninf - c_t) / L_t is not 0 (as the reference's softmax: a -inf term in D_t would stay -inf
// through any chain of nonzero rescales, even where their product, the class's weight, is 0).
// Class ids (one-hot q: w_y at the id, w_o elsewhere): S = C w_o + (w_y - w_o) and
// D_z = w_o A + (w_y - w_o) (z_y - c) with A = sum of (z - c) over every class (a shifted sum, as D_z's own for
// probabilities with w = 1) and z_y loaded once per row; zero weights skip their term. BCE with class ids: softplus(z) - w z = t z + log1p(exp(-|z|)),
// t = [z > 0] - w, so the row keeps P = sum max(z, 0), N = sum min(z, 0) over the other classes and
// G = sum log1p(exp(-|z|)) over all, and adds (1 - w_o) P - w_o N + t_y z_y once (zero coefficients skip +-inf).
// Rows: a class id equal to ignore_index gives 0 in both terms and both gradients; any other id outside [0, C)
// gives NaN there (row_value), so that a bad id poisons the reduced loss instead of passing as a zero-loss row.
//
// Design (what the launch makes uniform is a template parameter, LossVariant: CE or BCE, the target's kind, the
// sub term, T = 1; the host dispatches once, so each instance's loop holds only its own work). One block per row
// (few rows: a few blocks per row, below).
// A row is read as 16-byte vectors (8 bf16 / 4 fp32) from the first 16-byte boundary of the row (RowSpan): of B
// threads (64-256 per row, loss_threads), thread t takes vectors t, t + B, ... (a warp reads 512 contiguous bytes
// per load), kLossUnroll of them in flight; probabilities come in their own dtype (the logits' or fp32: one or two
// words per vector). The classes before that boundary and after the last whole vector (fewer than 2 x 8), or the
// whole row where z, s (in the backward dz, ds) and the probabilities do not sit alike within 16 bytes, go
// through a scalar loop. Forward: each thread folds one vector (a chunk) at a time into a private online state
// (one rescale per chunk, exp as exp2 of a pre-scaled difference); the states are merged across the block (warp
// shuffles, then across the warps), which is exact algebra: for states a, b with c = shift(max(m_a, m_b)):
//   L = L_a e^(m_a - c) + L_b e^(m_b - c),   D = D_a + S_a (c_a - c) + D_b + S_b (c_b - c),   S = S_a + S_b
//   L_t = L_ta e^(m_ta - c_t) + ...,   D_t = e^(m_ta - c_t) (D_ta + L_ta (c_sa - c_s)) + (the same for b)
//   m_ninf = max(m_ninf_a, m_ninf_b)
// (plain sums add). At T = 1 (UNIT_T) the teacher z/T is z: its max, exponentials and L_t are the main term's.
// Thread 0 writes every entry of the row's output column: the losses and the fp32 stats (c, log L, S; c_s, log
// L_s, c_t, log L_t; 0 where a term is absent or BCE), so the caller need not zero-fill it.
// Backward: one block per row, the same vectors, recomputing softmax / sigmoid from the stats; fp32 arithmetic, one
// rounding at the store. With few rows (M = 8, C = 128256) each row's vectors are split over blocks, grid (M,
// splits) (loss_split): the backward needs no combination; the forward's splits store their merged states in a
// workspace and the row's last block (an atomic ticket per row) merges them (masksub_loss.cu).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtype.cuh"
#include "masksub_kernels.h"

// NVVM's builtin for PTX ex2.approx.ftz.f32 (2^x, a bare MUFU.EX2; subnormal arguments and results flush to 0),
// declared for nvcc's host pass; the CUDA emulator defines it (emulator.h).
extern "C" __device__ float __nvvm_ex2_approx_ftz_f(float);

namespace masksub {
namespace {

constexpr int kLossThreads = 256;  // the most threads per row; fewer for short rows (loss_threads)
constexpr int kLossWarps = kLossThreads / 32;
constexpr int kLossUnroll = 2;  // vectors of each operand in flight per thread and iteration
constexpr int64_t kLossBlocks = 256;  // few rows: split over blocks, up to about this many (2 per SM)
constexpr float kLog2e = 1.4426950408889634f;

// The main term's target (an int, not an enum class, so that the kernels' names read alike in GCC's and in
// nvcc's demangled spelling: tools/perf_model/csrc_launches.normalise).
namespace Main {
constexpr int kNone = 0, kLabels = 1, kDense = 2;
}

// kSmoothed_: class ids whose weight off the id, w_o, may be nonzero (label smoothing); false (w_o = 0): the
// forward sums no z for w_o's term (CE: A; BCE: N).
template <bool kBce_, int kMain_, bool kSub_, bool kUnitT_, typename Target_ = float, bool kSmoothed_ = true>
struct LossVariant {
  using Target = Target_;  // the probabilities' element type (kDense): the logits' or fp32
  static constexpr bool kBce = kBce_;
  static constexpr bool kSmoothed = kSmoothed_;
  static constexpr bool kSub = kSub_;
  static constexpr bool kUnitT = kUnitT_ && kSub_;  // T = 1: the teacher z / T is z
  static constexpr bool kHasMain = kMain_ != Main::kNone;
  static constexpr bool kLabels = kMain_ == Main::kLabels;
  static constexpr bool kDense = kMain_ == Main::kDense;
};

// 16 bytes of logits: kWidth elements, loaded and stored as one word.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
  T v[kWidth];
};

__device__ __forceinline__ float shift_of(float m) { return m == -INFINITY ? 0.0f : m; }

// e^v for v <= 0 as 2^(v log2 e): one multiply and a bare MUFU.EX2. exp2f would add its subnormal fix-up (a
// compare and two predicated multiplies, per element: a fifth of the forward's loop); here results below 2^-126
// (v < -87.3) flush to 0, as in the Triton kernels: far below any sum they join (the max's own term is 1), and
// -inf still gives 0.
__device__ __forceinline__ float exp_neg(float v) { return __nvvm_ex2_approx_ftz_f(v * kLog2e); }

// 1 / y for y >= 1 (here 1 + exp(-x)): __fdividef's approximate reciprocal (2 ulp) instead of an IEEE division,
// whose slow path (a call, for operands the hardware reciprocal cannot take) costs registers and branches per
// element. y = +inf or y > 2^126 gives 0 (a sigmoid below 1e-38).
__device__ __forceinline__ float reciprocal(float y) { return __fdividef(1.0f, y); }

// sigmoid(x) from e = exp(-|x|) (a bare MUFU.EX2) and r = 1 / (1 + e) = sigmoid(|x|) (the reciprocal of y in
// [1, 2]): x > 0 gives r, else e r = sigmoid(-|x|) = 1 - r without the cancellation. NaN propagates (e = NaN).
__device__ __forceinline__ float sigmoid(float x) {
  const float e = exp_neg(-fabsf(x));
  const float r = reciprocal(1.0f + e);
  return x > 0.0f ? r : e * r;
}

// log(1 + v) for v in [0, 1] (here v = exp(-|x|)) as v P(v), P a degree-9 polynomial fitted to log1p(v) / v on
// [0, 1] (the Triton kernels' _log1p: truncation error 6e-9 relative, ~2 ulp in fp32 Horner, a quarter of
// log1pf's instructions; relative accuracy holds for tiny v, where 1 + v rounds to 1). The scalar classes' form;
// a vector's elements go through sum_log1p.
__device__ __forceinline__ float log1p_unit(float v) {
  float p = -0.003163999359346998f;
  p = p * v + 0.019487686092971974f;
  p = p * v - 0.056269525832053906f;
  p = p * v + 0.1053295061396915f;
  p = p * v - 0.15263273655130635f;
  p = p * v + 0.19661017875789702f;
  p = p * v - 0.24951167191526266f;
  p = p * v + 0.33329665491782323f;
  p = p * v - 0.49999890898558996f;
  p = p * v + 0.9999999945431184f;
  return p * v;
}

// log1p(a) + log1p(b) = log1p(a + b + a b): two terms' log1p as one argument (a, b >= 0: no cancellation; an FADD
// and an FFMA, ~1 ulp relative each).
__device__ __forceinline__ float log1p_pair(float a, float b) { return fmaf(a, b, a + b); }

// log1p(w) for w >= 0 (a vector's a + b + a b product of up to 8 terms: w < 2^8), ~3 ulp (the Triton kernels'
// _log1p_wide): u = 1 + w = 2^k m with m in [sqrt(1/2), sqrt(2)) from u's bits, log1p(w) = k ln 2 + log1p(f),
// f = m - 1, by f P(f) (P: degree 8, fitted to log1p(f) / f on that range, 3e-8 relative). Where k = 0
// (u < sqrt(2)), f = w itself: no rounding of 1 + w, so tiny w keep their relative accuracy; where k >= 1 the
// rounding of u costs at most 1.4 2^-24 of a result >= 0.34 (< 1 ulp). NaN w gives NaN (u >= sqrt(2) is false).
__device__ __forceinline__ float log1p_wide(float w) {
  constexpr int32_t kSqrtHalf = 0x3F3504F3;  // bits of fp32 sqrt(1/2)
  const float u = 1.0f + w;
  int32_t bits;
  memcpy(&bits, &u, sizeof(bits));
  const int32_t ix = bits - kSqrtHalf;  // k 2^23 + (bits of m) - bits(sqrt(1/2)), >= 0 for u >= 1
  const int32_t m_bits = (ix & 0x7FFFFF) + kSqrtHalf;
  float m;
  memcpy(&m, &m_bits, sizeof(m));
  const float f = u >= 1.4142135381698608f ? m - 1.0f : w;  // fp32 sqrt(2), bits 0x3FB504F3: exactly where k >= 1
  float p = 0.08721902006079846f;
  p = p * f - 0.14366621141645913f;
  p = p * f + 0.1495233258268796f;
  p = p * f - 0.1656242893530776f;
  p = p * f + 0.1995683062519509f;
  p = p * f - 0.2500207239370289f;
  p = p * f + 0.33334185670657684f;
  p = p * f - 0.49999987983833616f;
  p = p * f + 0.9999999741881259f;
  return fmaf(f, p, static_cast<float>(ix >> 23) * 0.6931471805599453f);
}

// sum_i log1p(v_i), v_i in [0, 1] (here exp(-|x|)): a vector of 4 or 8 as log1p(w), w = prod(1 + v) - 1 from a
// fixed tree of log1p_pair (2 instructions per element), then one log1p_wide: ~4 instructions per element where
// log1p_unit and its sum cost ~11, at the same accuracy (a few ulp relative, tiny terms included). N = 1: log1p_unit.
template <int N>
__device__ __forceinline__ float sum_log1p(const float (&v)[N]) {
  if constexpr (N < 4) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) sum += log1p_unit(v[i]);
    return sum;
  } else {
    static_assert(N <= 8 && (N & (N - 1)) == 0, "log1p_wide takes products of up to 8 terms");
    float w[N];
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = v[i];
#pragma unroll
    for (int step = 1; step < N; step *= 2) {
#pragma unroll
      for (int i = 0; i + step < N; i += 2 * step) w[i] = log1p_pair(w[i], w[i + step]);
    }
    return log1p_wide(w[0]);
  }
}

// Per-launch constants, divided once on the host (IEEE fp32, as on the device) instead of once per element.
struct LossConstants {
  float inv_temperature;  // 1 / T
  float smooth;           // eps / C
  float inv_classes;      // 1 / C
};

struct RowTarget {
  int64_t label;  // the class id, -1 for probability targets
  bool valid;     // the row counts (its class id is not ignore_index)
  bool bad;       // it counts, but its class id is outside [0, C): the row is NaN
  float w_hit, w_miss;  // class ids: the weight at the id and elsewhere, (1 - eps) [q > threshold] + eps / C
};

__host__ __device__ __forceinline__ float smoothed(const LossProblem& p, float smooth, float q) {
  if (p.binarise) q = q > p.threshold ? 1.0f : 0.0f;
  return (1.0f - p.label_smoothing) * q + smooth;
}

__device__ __forceinline__ bool has_labels(const LossProblem& p) {
  return p.target_kind == TargetKind::kLabelsInt64 || p.target_kind == TargetKind::kLabelsInt32;
}

// The row's class id (class-id targets only).
__device__ __forceinline__ int64_t label_of(const LossProblem& p, int64_t row) {
  const int64_t index = row * p.stride_target;
  return p.target_kind == TargetKind::kLabelsInt64 ? static_cast<const int64_t*>(p.target)[index]
                                                   : static_cast<const int32_t*>(p.target)[index];
}

// Variants without class ids know it at compile time (with_variant dispatches on the target: no class id to read,
// no flag to keep live across the row); the backward's class-id instance also serves rows without a target.
template <class V>
__device__ __forceinline__ RowTarget row_target(const LossProblem& p, float smooth, int64_t row) {
  if (!V::kLabels || !has_labels(p)) return {-1, true, false, 0.0f, 0.0f};
  const int64_t label = label_of(p, row);
  const bool valid = label != p.ignore_index;
  return {label, valid, valid && (label < 0 || label >= p.classes), smoothed(p, smooth, 1.0f),
          smoothed(p, smooth, 0.0f)};
}

template <class V>
__device__ __forceinline__ const typename V::Target* target_row(const LossProblem& p, int64_t row) {
  return static_cast<const typename V::Target*>(p.target) + row * p.stride_target;
}

// A row's value or gradient: as computed where the row counts, 0 where it is ignored, NaN where its class id is
// out of range (the NaN reaches any reduction: the bad id is visible without a host sync or a device trap).
__device__ __forceinline__ float row_value(const RowTarget& t, float value) {
  return t.bad ? NAN : (t.valid ? value : 0.0f);
}

// Which classes of a row go as vectors: [head, head + vectors * W); the `scalar` others are [0, head) and the
// tail. offsets: the bitwise OR of the byte differences between the row pointers that share the vectors.
struct RowSpan {
  int64_t head, vectors, scalar;
  __device__ __forceinline__ int64_t scalar_class(int64_t i, int width) const {
    return i < head ? i : i + vectors * width;
  }
};

__device__ __forceinline__ uint64_t address_of(const void* p) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
}

// y_row: the probabilities' row (null for other targets), read as 16-byte words too where a vector's worth of
// them spans 16 bytes or more, so its vectors must start on a boundary as well.
template <typename T, typename Q>
__device__ __forceinline__ RowSpan row_span(const T* row, uint64_t offsets, const Q* y_row, int64_t C) {
  constexpr int W = Pack<T>::kWidth;
  const int64_t to_boundary = static_cast<int64_t>(((16u - (address_of(row) & 15u)) & 15u) / sizeof(T));
  const int64_t head = to_boundary < C ? to_boundary : C;
  const bool target_fits = y_row == nullptr || W * sizeof(Q) < 16 ||
                           ((address_of(y_row) + static_cast<uint64_t>(head) * sizeof(Q)) & 15u) == 0;
  if ((offsets & 15u) != 0 || !target_fits) return {C, 0, C};  // the rows sit differently: scalar only
  const int64_t vectors = (C - head) / W;
  return {head, vectors, C - vectors * W};
}

__device__ __forceinline__ uint64_t offset_bits(const void* a, const void* b) {
  return b == nullptr ? 0 : address_of(a) ^ address_of(b);
}

// N values from row + c as fp32: 16-byte words where N of them span 16 bytes or more (c at a vector boundary),
// else one element at a time. bf16 words widen by placing bits (a bf16 is the top half of its fp32): one
// instruction per element, where the conversion of each element on its own takes two (a byte permute, a shift).
template <typename T, int N>
__device__ __forceinline__ void load_values(const T* row, int64_t c, float (&v)[N]) {
  constexpr int kWords = N * static_cast<int>(sizeof(T)) / 16, W = Pack<T>::kWidth;
  if constexpr (kWords == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = detail::to_acc<float>(row[c + i]);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      const uint4 pack = reinterpret_cast<const uint4*>(row + c)[j];
      const uint32_t words[4] = {pack.x, pack.y, pack.z, pack.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t low = words[i] << 16, high = words[i] & 0xFFFF0000u;  // elements 2i and 2i + 1
        memcpy(&v[j * W + 2 * i], &low, sizeof(float));
        memcpy(&v[j * W + 2 * i + 1], &high, sizeof(float));
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      const Pack<T> pack = reinterpret_cast<const Pack<T>*>(row + c)[j];
#pragma unroll
      for (int i = 0; i < W; ++i) v[j * W + i] = detail::to_acc<float>(pack.v[i]);
    }
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_logits(T* row, int64_t c, const float (&v)[N]) {
  if constexpr (N == 1) {
    row[c] = detail::from_acc<T>(v[0]);
  } else {
    Pack<T> pack;
#pragma unroll
    for (int i = 0; i < N; ++i) pack.v[i] = detail::from_acc<T>(v[i]);
    *reinterpret_cast<Pack<T>*>(row + c) = pack;
  }
}

// The class id's position among the chunk's classes [c, c + N), -1 if it is not one of them (32-bit compares per
// element, one 64-bit test per chunk).
template <int N>
__device__ __forceinline__ int position_in_chunk(int64_t label, int64_t c) {
  // in uint64: label - c overflows int64 (undefined) for an unchecked id near INT64_MIN (helper-248)
  const uint64_t at = static_cast<uint64_t>(label) - static_cast<uint64_t>(c);
  return at < static_cast<uint64_t>(N) ? static_cast<int>(at) : -1;
}

// The main term's weights of classes [c, c + N): probabilities (in their own dtype) or one-hot.
template <class V, int N>
__device__ __forceinline__ void main_weights(const LossProblem& p, float smooth, const typename V::Target* y_row,
                                             int64_t c, const RowTarget& t, float (&w)[N]) {
  if constexpr (V::kDense) {
    load_values<typename V::Target, N>(y_row, c, w);
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = smoothed(p, smooth, w[i]);
  } else {
    const int at = position_in_chunk<N>(t.label, c);
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = at == i ? t.w_hit : t.w_miss;
  }
}

// Threads per row: enough for kLossUnroll vectors each (at least 2 warps, at most kLossThreads), so that short rows
// (C = 1000) do not leave most of a block idle and pay a merge across 8 warps.
template <typename T>
int loss_threads(int64_t classes) {
  const int64_t vectors = classes / Pack<T>::kWidth;
  int threads = 64;
  while (threads < kLossThreads && threads * int64_t{kLossUnroll} < vectors) threads *= 2;
  return threads;
}

// Few rows: each row's vectors split over blocks of `threads`, grid (M, splits), about kLossBlocks blocks in all
// and at most `threads` per row (the forward's last block of a row loads a split's state per thread). Every split
// takes whole iterations of the vector loop (split_vectors, a multiple of threads x kLossUnroll) and the splits are
// recounted from that, so that none is left without vectors (a row has at most C / W of them from its first
// boundary). Many rows (M >= kLossBlocks) or short ones: one split, the whole row (split_vectors >= its vectors).
struct LossSplit {
  int64_t splits, split_vectors;
};

template <typename T>
LossSplit loss_split(int64_t rows, int64_t classes, int threads) {
  const int64_t step = int64_t{threads} * kLossUnroll;
  const int64_t iterations = (classes / Pack<T>::kWidth + step - 1) / step;  // of a row in one block
  int64_t splits = (kLossBlocks + rows - 1) / rows;
  splits = splits < threads ? splits : threads;
  splits = splits < iterations ? splits : iterations;
  if (splits <= 1) return {1, (iterations > 1 ? iterations : 1) * step};
  const int64_t per_split = (iterations + splits - 1) / splits;  // iterations of each split
  return {(iterations + per_split - 1) / per_split, per_split * step};
}

inline LossConstants constants_of(const LossProblem& p) {
  const float classes = static_cast<float>(p.classes);
  return {1.0f / p.temperature, p.label_smoothing / classes, 1.0f / classes};
}

// Pointers are checked only for a non-empty problem: an empty tensor's data pointer may be null.
inline bool valid_problem(const LossProblem& p) {
  return p.rows >= 0 && p.rows <= INT32_MAX && p.classes >= 1 && p.temperature > 0.0f &&
         (p.rows == 0 || p.target_kind == TargetKind::kNone || p.target != nullptr);
}

inline int main_of(TargetKind kind) {
  if (kind == TargetKind::kNone) return Main::kNone;
  return kind == TargetKind::kLabelsInt64 || kind == TargetKind::kLabelsInt32 ? Main::kLabels : Main::kDense;
}

template <typename T>
constexpr TargetKind kind_of() {
  if constexpr (std::is_same_v<T, float>) return TargetKind::kFloat32;
  if constexpr (std::is_same_v<T, __half>) return TargetKind::kFloat16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return TargetKind::kBFloat16;
  return TargetKind::kFloat64;
}

// The launch's variant, chosen once on the host: f(LossVariant<...>{}) for the problem's (bce, target, sub, T = 1)
// with logits of type T; false (nothing launched) for probabilities in a dtype other than T's or fp32.
template <bool kBce, int kMain, typename Q, bool kSmoothed = true, class F>
bool with_sub(const LossProblem& p, F&& f) {
  if (p.sub_logits == nullptr) {
    f(LossVariant<kBce, kMain, false, false, Q, kSmoothed>{});
  } else if (p.temperature == 1.0f) {
    f(LossVariant<kBce, kMain, true, true, Q, kSmoothed>{});
  } else {
    f(LossVariant<kBce, kMain, true, false, Q, kSmoothed>{});
  }
  return true;
}

template <typename T, bool kBce, class F>
bool with_main(const LossProblem& p, F&& f) {
  const int main = main_of(p.target_kind);
  if (main == Main::kNone) return with_sub<kBce, Main::kNone, float>(p, f);
  if (main == Main::kLabels) {
    // w_o = 0 (no label smoothing): the instance that sums no z for w_o's term
    const bool off_weight = smoothed(p, constants_of(p).smooth, 0.0f) != 0.0f;  // w_o, as row_target has it
    return off_weight ? with_sub<kBce, Main::kLabels, float, true>(p, f)
                        : with_sub<kBce, Main::kLabels, float, false>(p, f);
  }
  if (p.target_kind == kind_of<T>()) return with_sub<kBce, Main::kDense, T>(p, f);
  if (p.target_kind == TargetKind::kFloat32) return with_sub<kBce, Main::kDense, float>(p, f);
  return false;
}

template <typename T, class F>
bool with_variant(const LossProblem& p, F&& f) {
  return p.bce ? with_main<T, true>(p, f) : with_main<T, false>(p, f);
}

}  // namespace
}  // namespace masksub
