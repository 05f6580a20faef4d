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
// sub = log L_s - D_t / L_t. No lse - z cancellation: every term is >= 0.
// Class ids (one-hot q: w_y at the id, w_o elsewhere): S = C w_o + (w_y - w_o) and
// D_z = w_o (A - (C - 1) c) + w_y (z_y - c) with A = sum of z over the other classes (a plain sum) and z_y loaded
// once per row; zero weights skip their term. BCE with class ids: softplus(z) - w z = t z + log1p(exp(-|z|)),
// t = [z > 0] - w, so the row keeps P = sum max(z, 0), N = sum min(z, 0) over the other classes and
// G = sum log1p(exp(-|z|)) over all, and adds (1 - w_o) P - w_o N + t_y z_y once (zero coefficients skip +-inf).
// Rows: a class id equal to ignore_index gives 0 in both terms and both gradients; any other id outside [0, C)
// gives NaN there (row_value), so that a bad id poisons the reduced loss instead of passing as a zero-loss row.
//
// Design (what the launch makes uniform is a template parameter, LossVariant: CE or BCE, the target's kind, the
// sub term, T = 1; the host dispatches once, so each instance's loop holds only its own work). One block per row.
// A row is read as 16-byte vectors (8 bf16 / 4 fp32) from the first 16-byte boundary of the row (RowSpan): thread
// t takes vectors t, t + 256, ... (a warp reads 512 contiguous bytes per load), kLossUnroll of them in flight; the
// classes before that boundary and after the last whole vector (fewer than 2 x 8), or the whole row where z, s
// (and in the backward dz, ds) do not share their offset within 16 bytes, go through a scalar loop. Forward: each
// thread folds one vector (a chunk) at a time into a private online state (one rescale per chunk, exp as exp2 of a
// pre-scaled difference); the states are merged across the block (warp shuffles, then one warp), which is exact
// algebra: for states a, b with c = shift(max(m_a, m_b)):
//   L = L_a e^(m_a - c) + L_b e^(m_b - c),   D = D_a + S_a (c_a - c) + D_b + S_b (c_b - c),   S = S_a + S_b
//   L_t = L_ta e^(m_ta - c_t) + ...,   D_t = e^(m_ta - c_t) (D_ta + L_ta (c_sa - c_s)) + (the same for b)
// (plain sums add). At T = 1 (UNIT_T) the teacher z/T is z: its max, exponentials and L_t are the main term's.
// Thread 0 writes every entry of the row's output column: the losses and the fp32 stats (c, log L, S; c_s, log
// L_s, c_t, log L_t; 0 where a term is absent or BCE), so the caller need not zero-fill it.
// Backward: one block per row, the same vectors, recomputing softmax / sigmoid from the stats; fp32 arithmetic, one
// rounding at the store.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtype.cuh"
#include "masksub_kernels.h"

namespace masksub {
namespace {

constexpr int kLossThreads = 256;  // the most threads per row; fewer for short rows (loss_threads)
constexpr int kLossWarps = kLossThreads / 32;
constexpr int kLossUnroll = 2;  // vectors of each operand in flight per thread and iteration
constexpr float kLog2e = 1.4426950408889634f;

// The main term's target (an int, not an enum class, so that the kernels' names read alike in GCC's and in
// nvcc's demangled spelling: tools/perf_model/csrc_launches.normalise).
namespace Main {
constexpr int kNone = 0, kLabels = 1, kDense = 2;
}

template <bool kBce_, int kMain_, bool kSub_, bool kUnitT_, typename Target_ = float>
struct LossVariant {
  using Target = Target_;  // the probabilities' element type (kDense): the logits' or fp32
  static constexpr bool kBce = kBce_;
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

// e^v for v <= 0 as exp2 of a pre-scaled argument (one multiply, MUFU.EX2 and its subnormal fix-up).
__device__ __forceinline__ float exp_neg(float v) { return exp2f(v * kLog2e); }

// 1 / y for y >= 1 (here 1 + exp(-x)): __fdividef's approximate reciprocal (2 ulp) instead of an IEEE division,
// whose slow path (a call, for operands the hardware reciprocal cannot take) costs registers and branches per
// element. y = +inf or y > 2^126 gives 0 (a sigmoid below 1e-38).
__device__ __forceinline__ float reciprocal(float y) { return __fdividef(1.0f, y); }

__device__ __forceinline__ float sigmoid(float x) { return reciprocal(1.0f + exp2f(x * -kLog2e)); }

// log(1 + v) for v in [0, 1] (here v = exp(-|x|)) as v P(v), P a degree-9 polynomial fitted to log1p(v) / v on
// [0, 1] (the Triton kernels' _log1p: truncation error 6e-9 relative, ~2 ulp in fp32 Horner, a quarter of
// log1pf's instructions; relative accuracy holds for tiny v, where 1 + v rounds to 1).
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

// softplus(x) - w x = t x + log1p(exp(-|x|)), t = [x > 0] - w: t = 0 (w = 1 at x = +inf, w = 0 at x = -inf) gives
// 0, not 0 * inf; e = exp(-|x|) is passed in (BCE at T = 1 shares it with the teacher's sigmoid).
__device__ __forceinline__ float bce_term(float x, float w, float e) {
  const float t = (x > 0.0f ? 1.0f : 0.0f) - w;
  return (t != 0.0f ? t * x : 0.0f) + log1p_unit(e);
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

__device__ __forceinline__ float smoothed(const LossProblem& p, float smooth, float q) {
  if (p.binarise) q = q > p.threshold ? 1.0f : 0.0f;
  return (1.0f - p.label_smoothing) * q + smooth;
}

__device__ __forceinline__ RowTarget row_target(const LossProblem& p, float smooth, int64_t row) {
  const bool labels = p.target_kind == TargetKind::kLabelsInt64 || p.target_kind == TargetKind::kLabelsInt32;
  if (!labels) return {-1, true, false, 0.0f, 0.0f};
  const int64_t index = row * p.stride_target;
  const int64_t label = p.target_kind == TargetKind::kLabelsInt64 ? static_cast<const int64_t*>(p.target)[index]
                                                                  : static_cast<const int32_t*>(p.target)[index];
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
  const uint64_t at = static_cast<uint64_t>(label - c);
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

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------

// CE: the fields as in the maths above (a_z = A); BCE: plain sums, the main term's in a_z (probabilities: the
// sum of terms; class ids: with p_z = P, n_z = N, g_z = G) and the sub term's in l_s.
struct LossState {
  float m_z, l_z, s_z, d_z, a_z, p_z, n_z;
  float m_s, l_s, m_t, l_t, d_t;
};

__device__ __forceinline__ LossState empty_state() {
  return {-INFINITY, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -INFINITY, 0.0f, -INFINITY, 0.0f, 0.0f};
}

// The chunk's N classes [c, c + N) (z, and x = s / T) into the thread's state.
template <class V, int N>
__device__ __forceinline__ void fold(LossState& st, const float (&z)[N], const float (&x)[N], const float (&w)[N],
                                     int label_at, float inv_t) {
  if constexpr (V::kBce) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float e = exp_neg(-fabsf(z[i]));  // exp(-|z|); -inf: 0
      if constexpr (V::kDense) {
        st.a_z += bce_term(z[i], w[i], e);
      } else if constexpr (V::kLabels) {
        const float z_other = label_at == i ? 0.0f : z[i];  // the id's linear part: once per row
        st.p_z += fmaxf(z_other, 0.0f);
        st.n_z += fminf(z_other, 0.0f);
        st.l_z += log1p_unit(e);
      }
      if constexpr (V::kSub) {
        float teacher;
        if constexpr (V::kUnitT) {
          // sigmoid(z) from the same exp(-|z|): r = 1 / (1 + e) = sigmoid(|z|), e r = sigmoid(-|z|)
          const float r = reciprocal(1.0f + e);
          teacher = z[i] > 0.0f ? r : e * r;
        } else {
          teacher = sigmoid(z[i] * inv_t);
        }
        st.l_s += bce_term(x[i], teacher, exp_neg(-fabsf(x[i])));
      }
    }
  } else {
    // main (and, at T = 1, the teacher): one rescale by e^(m_old - c_new) per chunk, one exponential per class
    constexpr bool kMainState = V::kHasMain || V::kUnitT;
    float alpha = 1.0f, e_z[N];
    const float l_before = st.l_z;
    const float c_z_old = shift_of(st.m_z);
    if constexpr (kMainState) {
      float chunk_max = z[0];
#pragma unroll
      for (int i = 1; i < N; ++i) chunk_max = fmaxf(chunk_max, z[i]);
      const float m_new = fmaxf(st.m_z, chunk_max), c_new = shift_of(m_new);
      alpha = exp_neg(st.m_z - c_new);  // e^(-inf - c) = 0 for an empty state
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        e_z[i] = exp_neg(z[i] - c_new);
        sum += e_z[i];
      }
      st.l_z = st.l_z * alpha + sum;
      if constexpr (V::kDense) {
        st.d_z += st.s_z * (c_z_old - c_new);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          if (w[i] != 0.0f) st.d_z += w[i] * (z[i] - c_new);
          st.s_z += w[i];
        }
      } else if constexpr (V::kLabels) {
#pragma unroll
        for (int i = 0; i < N; ++i) st.a_z += z[i];  // over every class: the row's end takes the id's out
      }
      st.m_z = m_new;
    }
    if constexpr (V::kSub) {
      float x_max = x[0];
#pragma unroll
      for (int i = 1; i < N; ++i) x_max = fmaxf(x_max, x[i]);
      const float ms_new = fmaxf(st.m_s, x_max);
      const float cs_old = shift_of(st.m_s), cs_new = shift_of(ms_new);
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < N; ++i) sum += exp_neg(x[i] - cs_new);
      st.l_s = st.l_s * exp_neg(st.m_s - cs_new) + sum;
      st.m_s = ms_new;
      // teacher z / T: its rescale alpha_t, its exponentials e_t and its running sum before this chunk
      float alpha_t = alpha, l_t_before = l_before, e_t[N];
      if constexpr (V::kUnitT) {
#pragma unroll
        for (int i = 0; i < N; ++i) e_t[i] = e_z[i];
      } else {
        float zt[N], t_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          zt[i] = z[i] * inv_t;
          t_max = fmaxf(t_max, zt[i]);
        }
        const float mt_new = fmaxf(st.m_t, t_max), ct_new = shift_of(mt_new);
        alpha_t = exp_neg(st.m_t - ct_new);
        l_t_before = st.l_t;
        float t_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          e_t[i] = exp_neg(zt[i] - ct_new);
          t_sum += e_t[i];
        }
        st.l_t = st.l_t * alpha_t + t_sum;
        st.m_t = mt_new;
      }
      float d = alpha_t * (st.d_t + l_t_before * (cs_old - cs_new));
#pragma unroll
      for (int i = 0; i < N; ++i) d += e_t[i] != 0.0f ? e_t[i] * (x[i] - cs_new) : 0.0f;
      st.d_t = d;
    }
  }
}

// Both states' sums about the larger max (exactly the algebra above; plain sums add). Only the variant's fields:
// the others stay as empty_state() has them. At T = 1 the teacher's max and sum are the main term's (m_z, l_z).
template <class V>
__device__ __forceinline__ LossState merge(const LossState& a, const LossState& b) {
  LossState r = empty_state();
  if constexpr (V::kBce) {
    r.a_z = a.a_z + b.a_z;
    r.p_z = a.p_z + b.p_z;
    r.n_z = a.n_z + b.n_z;
    r.l_z = a.l_z + b.l_z;
    r.l_s = a.l_s + b.l_s;
  } else {
    float alpha_a = 1.0f, alpha_b = 1.0f;
    if constexpr (V::kHasMain || V::kUnitT) {
      r.m_z = fmaxf(a.m_z, b.m_z);
      const float c = shift_of(r.m_z);
      alpha_a = exp_neg(a.m_z - c);  // e^(-inf - c) = 0 for an empty state
      alpha_b = exp_neg(b.m_z - c);
      r.l_z = a.l_z * alpha_a + b.l_z * alpha_b;
      if constexpr (V::kDense) {
        r.d_z = a.d_z + a.s_z * (shift_of(a.m_z) - c) + b.d_z + b.s_z * (shift_of(b.m_z) - c);
        r.s_z = a.s_z + b.s_z;
      }
      if constexpr (V::kLabels) r.a_z = a.a_z + b.a_z;
    }
    if constexpr (V::kSub) {
      r.m_s = fmaxf(a.m_s, b.m_s);
      const float c_s = shift_of(r.m_s);
      r.l_s = a.l_s * exp_neg(a.m_s - c_s) + b.l_s * exp_neg(b.m_s - c_s);
      float beta_a = alpha_a, beta_b = alpha_b, l_ta = a.l_z, l_tb = b.l_z;
      if constexpr (!V::kUnitT) {
        r.m_t = fmaxf(a.m_t, b.m_t);
        const float c_t = shift_of(r.m_t);
        beta_a = exp_neg(a.m_t - c_t);
        beta_b = exp_neg(b.m_t - c_t);
        l_ta = a.l_t;
        l_tb = b.l_t;
        r.l_t = l_ta * beta_a + l_tb * beta_b;
      }
      r.d_t = beta_a * (a.d_t + l_ta * (shift_of(a.m_s) - c_s)) + beta_b * (b.d_t + l_tb * (shift_of(b.m_s) - c_s));
    }
  }
  return r;
}

// Another lane's state: the variant's fields only (the others are the same constants in every lane).
template <class V>
__device__ __forceinline__ LossState shuffle_xor(const LossState& s, int offset) {
  const auto other = [offset](float v) { return __shfl_xor_sync(0xFFFFFFFFu, v, offset); };
  LossState r = s;
  if constexpr (V::kBce) {
    if constexpr (V::kDense) r.a_z = other(s.a_z);
    if constexpr (V::kLabels) {
      r.p_z = other(s.p_z);
      r.n_z = other(s.n_z);
      r.l_z = other(s.l_z);
    }
    if constexpr (V::kSub) r.l_s = other(s.l_s);
  } else {
    if constexpr (V::kHasMain || V::kUnitT) {
      r.m_z = other(s.m_z);
      r.l_z = other(s.l_z);
    }
    if constexpr (V::kDense) {
      r.s_z = other(s.s_z);
      r.d_z = other(s.d_z);
    }
    if constexpr (V::kLabels) r.a_z = other(s.a_z);
    if constexpr (V::kSub) {
      r.m_s = other(s.m_s);
      r.l_s = other(s.l_s);
      r.d_t = other(s.d_t);
      if constexpr (!V::kUnitT) {
        r.m_t = other(s.m_t);
        r.l_t = other(s.l_t);
      }
    }
  }
  return r;
}

// The block's merged state, valid in thread 0 (a fixed tree: the same bits on every run). Every warp merges the
// warp states, not warp 0 alone: shuffles under a branch compile to divergence checks and fallback paths. Lanes
// past the block's warps hold empty states, which merge as the identity (e^0 = 1, shifts unchanged).
template <class V>
__device__ __forceinline__ LossState block_merge(LossState state) {
  __shared__ LossState warp_states[kLossWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) state = merge<V>(state, shuffle_xor<V>(state, offset));
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  state = lane < warps ? warp_states[lane] : empty_state();
#pragma unroll
  for (int offset = kLossWarps / 2; offset > 0; offset /= 2) state = merge<V>(state, shuffle_xor<V>(state, offset));
  return state;
}

// Classes [c, c + N) of the row (N: a vector, or 1) into the state.
template <typename T, class V, int N>
__device__ __forceinline__ void forward_chunk(LossState& st, const T* z_row, const T* s_row, const LossProblem& p,
                                              const LossConstants& k, const typename V::Target* y_row,
                                              const RowTarget& t, int64_t c) {
  float z[N], x[N] = {}, w[N] = {};
  load_values<T, N>(z_row, c, z);
  if constexpr (V::kSub) {
    load_values<T, N>(s_row, c, x);
    if constexpr (!V::kUnitT) {
#pragma unroll
      for (int i = 0; i < N; ++i) x[i] *= k.inv_temperature;
    }
  }
  if constexpr (V::kHasMain) main_weights<V, N>(p, k.smooth, y_row, c, t, w);
  fold<V, N>(st, z, x, w, V::kBce && V::kLabels ? position_in_chunk<N>(t.label, c) : -1, k.inv_temperature);
}

template <typename T, class V>
__global__ void __launch_bounds__(kLossThreads)
    loss_forward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                        float* __restrict__ out) {
  constexpr int W = Pack<T>::kWidth;
  const int64_t row = blockIdx.x, C = p.classes, M = p.rows;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = V::kSub ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  const RowTarget target = row_target(p, k.smooth, row);
  const typename V::Target* y_row = V::kDense ? target_row<V>(p, row) : nullptr;
  const RowSpan span = row_span(z_row, offset_bits(z_row, s_row), y_row, C);
  LossState st = empty_state();
  const int threads = blockDim.x;
  for (int64_t v = threadIdx.x; v < span.vectors; v += int64_t{threads} * kLossUnroll) {
#pragma unroll
    for (int u = 0; u < kLossUnroll; ++u) {
      const int64_t vector = v + int64_t{u} * threads;
      if (vector < span.vectors) forward_chunk<T, V, W>(st, z_row, s_row, p, k, y_row, target, span.head + vector * W);
    }
  }
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < span.scalar; i += threads) {
    forward_chunk<T, V, 1>(st, z_row, s_row, p, k, y_row, target, span.scalar_class(i, W));
  }
  st = block_merge<V>(st);
  if constexpr (V::kUnitT && !V::kBce) {  // the teacher's max and sum are the main term's
    st.m_t = st.m_z;
    st.l_t = st.l_z;
  }
  if (threadIdx.x != 0) return;
  float* o = out + row;  // row k of the output for this row: o[k * M]
  float main = 0.0f, sub = 0.0f, stats[kLossRows] = {};
  if constexpr (V::kHasMain) {
    float z_y = 0.0f;  // class ids: the id's logit, read once
    const bool has_y = V::kLabels && target.label >= 0 && target.label < C;
    if (has_y) z_y = detail::to_acc<float>(z_row[target.label]);
    const float w_y = target.w_hit, w_o = target.w_miss;
    if constexpr (V::kBce) {
      float sum = st.a_z;  // probabilities: the sum of the terms
      if constexpr (V::kLabels) {
        sum = (w_o != 1.0f ? (1.0f - w_o) * st.p_z : 0.0f) - (w_o != 0.0f ? w_o * st.n_z : 0.0f) + st.l_z;
        const float t_y = (z_y > 0.0f ? 1.0f : 0.0f) - w_y;  // the id's linear part, as bce_term
        sum += has_y && t_y != 0.0f ? t_y * z_y : 0.0f;
      }
      main = sum * k.inv_classes;
    } else {
      const float c = shift_of(st.m_z);
      float s_w = st.s_z, d_w = st.d_z;
      if constexpr (V::kLabels) {
        s_w = w_o * static_cast<float>(C) + (has_y ? w_y - w_o : 0.0f);
        // A = the sum over every class less z_y (z_y = -inf: the sum is -inf already, and so is D_z)
        const float a = has_y && z_y != -INFINITY ? st.a_z - z_y : st.a_z;
        d_w = w_o != 0.0f ? w_o * (a - static_cast<float>(C - (has_y ? 1 : 0)) * c) : 0.0f;
        d_w += has_y && w_y != 0.0f ? w_y * (z_y - c) : 0.0f;
      }
      main = s_w * logf(st.l_z) - d_w;  // sum_c w_c (lse - z_c)
      stats[kStatShiftZ] = c;
      stats[kStatLogSumZ] = logf(st.l_z);
      stats[kStatMassZ] = s_w;
    }
  }
  if constexpr (V::kSub) {
    if constexpr (V::kBce) {
      sub = st.l_s * k.inv_classes;
    } else {
      sub = logf(st.l_s) - st.d_t / st.l_t;  // sum_c p_c (lse(s/T) - s_c/T)
      stats[kStatShiftS] = shift_of(st.m_s);
      stats[kStatLogSumS] = logf(st.l_s);
      stats[kStatShiftT] = shift_of(st.m_t);
      stats[kStatLogSumT] = logf(st.l_t);
    }
  }
  stats[kLossMain] = V::kHasMain ? row_value(target, main) : 0.0f;
  stats[kLossSub] = V::kSub ? row_value(target, (p.temperature * p.temperature) * sub) : 0.0f;
#pragma unroll
  for (int r = 0; r < kLossRows; ++r) o[r * M] = stats[r];
}

// ---------------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------------

// What the backward reads per row: upstream gradients (NaN for a bad id, 0 for an ignored row: set once here) and
// the forward's stats, the logs as log2 (softmax(v)_c = exp2((v_c - c) log2 e - log2 L)).
struct RowGrad {
  float g_m, c_z, b_z, s_z;
  float g_s, c_s, b_s, c_t, b_t;
};

template <typename T, class V, int N>
__device__ __forceinline__ void backward_chunk(const T* z_row, const T* s_row, T* dz_row, T* ds_row,
                                               const LossProblem& p, const LossConstants& k,
                                               const typename V::Target* y_row, const RowTarget& t, const RowGrad& g,
                                               int64_t c) {
  float z[N];
  load_values<T, N>(z_row, c, z);
  if (dz_row != nullptr) {
    float w[N], d[N];
    main_weights<V, N>(p, k.smooth, y_row, c, t, w);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float prob = V::kBce ? sigmoid(z[i]) : g.s_z * exp2f((z[i] - g.c_z) * kLog2e - g.b_z);
      d[i] = t.valid ? g.g_m * (prob - w[i]) : 0.0f;
    }
    store_logits<T, N>(dz_row, c, d);
  }
  if (ds_row != nullptr) {
    float s[N], d[N];
    load_values<T, N>(s_row, c, s);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float x = s[i] * k.inv_temperature, zt = z[i] * k.inv_temperature;
      const float diff = V::kBce ? sigmoid(x) - sigmoid(zt)
                                 : exp2f((x - g.c_s) * kLog2e - g.b_s) - exp2f((zt - g.c_t) * kLog2e - g.b_t);
      d[i] = t.valid ? g.g_s * diff : 0.0f;
    }
    store_logits<T, N>(ds_row, c, d);
  }
}

template <typename T, class V>
__global__ void __launch_bounds__(kLossThreads)
    loss_backward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                         const float* __restrict__ out,
                         const float* __restrict__ grad_main, int64_t stride_gm, const float* __restrict__ grad_sub,
                         int64_t stride_gs, T* __restrict__ dz, T* __restrict__ ds) {
  constexpr int W = Pack<T>::kWidth;
  const int64_t row = blockIdx.x, C = p.classes, M = p.rows;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = p.sub_logits != nullptr ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  T* dz_row = dz != nullptr ? dz + row * C : nullptr;
  T* ds_row = ds != nullptr ? ds + row * C : nullptr;
  const RowTarget target = row_target(p, k.smooth, row);
  const typename V::Target* y_row = V::kDense ? target_row<V>(p, row) : nullptr;
  const float per_class = V::kBce ? k.inv_classes : 1.0f;
  const float* o = out + row;
  RowGrad g{};
  if (dz != nullptr) {
    g = {grad_main[row * stride_gm] * per_class, o[kStatShiftZ * M], o[kStatLogSumZ * M] * kLog2e,
         o[kStatMassZ * M]};
  }
  if (ds != nullptr) {
    g.g_s = grad_sub[row * stride_gs] * (p.temperature * per_class);
    g.c_s = o[kStatShiftS * M];
    g.b_s = o[kStatLogSumS * M] * kLog2e;
    g.c_t = o[kStatShiftT * M];
    g.b_t = o[kStatLogSumT * M] * kLog2e;
  }
  // a bad class id: NaN upstream gradients make the row NaN (NaN times anything), as row_value does in the
  // forward; an ignored row: zeros (selected per element, not a zero factor: 0 times an infinite logit's term is NaN)
  if (target.bad) g.g_m = g.g_s = NAN;
  const RowSpan span = row_span(
      z_row, offset_bits(z_row, s_row) | offset_bits(z_row, dz_row) | offset_bits(z_row, ds_row), y_row, C);
  const int threads = blockDim.x;
  for (int64_t v = threadIdx.x; v < span.vectors; v += int64_t{threads} * kLossUnroll) {
#pragma unroll
    for (int u = 0; u < kLossUnroll; ++u) {
      const int64_t vector = v + int64_t{u} * threads;
      if (vector < span.vectors) {
        backward_chunk<T, V, W>(z_row, s_row, dz_row, ds_row, p, k, y_row, target, g, span.head + vector * W);
      }
    }
  }
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < span.scalar; i += threads) {
    backward_chunk<T, V, 1>(z_row, s_row, dz_row, ds_row, p, k, y_row, target, g, span.scalar_class(i, W));
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
template <bool kBce, int kMain, typename Q, class F>
bool with_sub(const LossProblem& p, F&& f) {
  if (p.sub_logits == nullptr) {
    f(LossVariant<kBce, kMain, false, false, Q>{});
  } else if (p.temperature == 1.0f) {
    f(LossVariant<kBce, kMain, true, true, Q>{});
  } else {
    f(LossVariant<kBce, kMain, true, false, Q>{});
  }
  return true;
}

template <typename T, bool kBce, class F>
bool with_main(const LossProblem& p, F&& f) {
  const int main = main_of(p.target_kind);
  if (main == Main::kNone) return with_sub<kBce, Main::kNone, float>(p, f);
  if (main == Main::kLabels) return with_sub<kBce, Main::kLabels, float>(p, f);
  if (p.target_kind == kind_of<T>()) return with_sub<kBce, Main::kDense, T>(p, f);
  if (p.target_kind == TargetKind::kFloat32) return with_sub<kBce, Main::kDense, float>(p, f);
  return false;
}

template <typename T, class F>
bool with_variant(const LossProblem& p, F&& f) {
  return p.bce ? with_main<T, true>(p, f) : with_main<T, false>(p, f);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
cudaError_t launch_masksub_loss_forward(const T* logits, const LossProblem& problem, float* out,
                                        cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  const bool launched = with_variant<T>(problem, [&](auto variant) {
    using V = decltype(variant);
    loss_forward_kernel<T, V><<<static_cast<unsigned int>(problem.rows), loss_threads<T>(problem.classes), 0, stream>>>(
        logits, problem, constants_of(problem), out);
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_masksub_loss_backward(const T* logits, const LossProblem& problem, const float* out,
                                         const float* grad_main, int64_t stride_grad_main, const float* grad_sub,
                                         int64_t stride_grad_sub, T* grad_logits, T* grad_sub_logits,
                                         cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  if (problem.rows == 0 || (grad_logits == nullptr && grad_sub_logits == nullptr)) return cudaSuccess;
  if ((grad_logits != nullptr && grad_main == nullptr) ||
      (grad_sub_logits != nullptr && (grad_sub == nullptr || problem.sub_logits == nullptr))) {
    return cudaErrorInvalidValue;
  }
  // the backward's loop depends on CE / BCE and the target only (its sub term is there when ds is wanted, and T is
  // a runtime factor): one instance per (bce, target), the sub flags fixed
  const bool launched = with_variant<T>(problem, [&](auto variant) {
    using Variant = decltype(variant);
    using V = LossVariant<Variant::kBce, Variant::kDense ? Main::kDense : Main::kLabels, true, false,
                          typename Variant::Target>;
    loss_backward_kernel<T, V><<<static_cast<unsigned int>(problem.rows), loss_threads<T>(problem.classes), 0, stream>>>(
        logits, problem, constants_of(problem), out, grad_main, stride_grad_main, grad_sub, stride_grad_sub,
        grad_logits, grad_sub_logits);
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

#define MASKSUB_INSTANTIATE_LOSS_OPS(T)                                                                            \
  template cudaError_t launch_masksub_loss_forward<T>(const T*, const LossProblem&, float*, cudaStream_t);        \
  template cudaError_t launch_masksub_loss_backward<T>(const T*, const LossProblem&, const float*, const float*, \
                                                       int64_t, const float*, int64_t, T*, T*, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_LOSS_OPS)
#undef MASKSUB_INSTANTIATE_LOSS_OPS

}  // namespace masksub
