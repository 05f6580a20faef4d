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
// Rows: a class id equal to ignore_index gives 0 in both terms and both gradients; any other id outside [0, C)
// gives NaN there (row_value), so that a bad id poisons the reduced loss instead of passing as a zero-loss row.
//
// Forward: one block per row. Each thread folds its classes (strided, kLossChunk at a time: one rescale per chunk)
// into a private state; the states are merged across the block (warp shuffles, then one warp), which is exact
// algebra: for states a, b with c = shift(max(m_a, m_b)):
//   L = L_a e^(m_a - c) + L_b e^(m_b - c),   D = D_a + S_a (c_a - c) + D_b + S_b (c_b - c),   S = S_a + S_b
//   L_t = L_ta e^(m_ta - c_t) + ...,   D_t = e^(m_ta - c_t) (D_ta + L_ta (c_sa - c_s)) + (the same for b)
// Thread 0 writes the per-row losses and the fp32 stats (c, log L, S; c_s, log L_s, c_t, log L_t).
// Backward: one block per row, recomputing softmax / sigmoid from the stats; fp32 arithmetic, one rounding at the
// store. The target's dtype is independent of the logits': it is read through a switch that is uniform over the
// launch (no divergence), so the kernels are templates over the logits' dtype only.
#include <cmath>
#include <cstdint>

#include "dtype.cuh"
#include "masksub_kernels.h"

namespace masksub {
namespace {

constexpr int kLossThreads = 256;
constexpr int kLossWarps = kLossThreads / 32;
constexpr int kLossChunk = 4;  // classes per thread and step: one rescale of the running state per chunk

__device__ __forceinline__ float shift_of(float m) { return m == -INFINITY ? 0.0f : m; }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// softplus(x) - w x = (1 - w) max(x, 0) - w min(x, 0) + log1p(exp(-|x|)); zero coefficients skip +-inf.
__device__ __forceinline__ float bce_term(float x, float w) {
  const float positive = w != 1.0f ? (1.0f - w) * fmaxf(x, 0.0f) : 0.0f;
  const float negative = w != 0.0f ? w * fminf(x, 0.0f) : 0.0f;
  return positive - negative + log1pf(expf(-fabsf(x)));
}

__device__ __forceinline__ bool is_labels(TargetKind kind) {
  return kind == TargetKind::kLabelsInt64 || kind == TargetKind::kLabelsInt32;
}

// An if chain rather than a switch: ptxas turned the switch (a jump table) into spills in these kernels.
__device__ __forceinline__ float load_probability(const void* target, int64_t index, TargetKind kind) {
  if (kind == TargetKind::kFloat32) return static_cast<const float*>(target)[index];
  if (kind == TargetKind::kFloat16) return __half2float(static_cast<const __half*>(target)[index]);
  if (kind == TargetKind::kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(target)[index]);
  return static_cast<float>(static_cast<const double*>(target)[index]);
}

// Per-launch constants, divided once on the host (IEEE fp32, as on the device) instead of once per element:
// per-element divisions cost spills around the division's slow path in these kernels.
struct LossConstants {
  float inv_temperature;  // 1 / T
  float smooth;           // eps / C
  float inv_classes;      // 1 / C
};

struct RowTarget {
  int64_t label;  // the class id, -1 for probability targets
  bool valid;     // the row counts (its class id is not ignore_index)
  bool bad;       // it counts, but its class id is outside [0, C): the row is NaN
};

__device__ __forceinline__ RowTarget row_target(const LossProblem& p, int64_t row) {
  if (!is_labels(p.target_kind)) return {-1, true, false};
  const int64_t index = row * p.stride_target;
  const int64_t label = p.target_kind == TargetKind::kLabelsInt64 ? static_cast<const int64_t*>(p.target)[index]
                                                                  : static_cast<const int32_t*>(p.target)[index];
  const bool valid = label != p.ignore_index;
  return {label, valid, valid && (label < 0 || label >= p.classes)};
}

// A row's value or gradient: as computed where the row counts, 0 where it is ignored, NaN where its class id is
// out of range (the NaN reaches any reduction: the bad id is visible without a host sync or a device trap).
__device__ __forceinline__ float row_value(const RowTarget& t, float value) {
  return t.bad ? NAN : (t.valid ? value : 0.0f);
}

// w_c = (1 - eps) q_c + eps / C, q binarised first when asked.
__device__ __forceinline__ float main_weight(const LossProblem& p, float smooth, int64_t row, int64_t c,
                                             int64_t label) {
  float q = is_labels(p.target_kind) ? (c == label ? 1.0f : 0.0f)
                                     : load_probability(p.target, row * p.stride_target + c, p.target_kind);
  if (p.binarise) q = q > p.threshold ? 1.0f : 0.0f;
  return (1.0f - p.label_smoothing) * q + smooth;
}

struct LossState {
  float m_z, l_z, s_z, d_z, acc_m;  // main: max, sum e^(z - c), sum w, sum w (z - c); BCE: sum of terms
  float m_s, l_s, m_t, l_t, d_t, acc_s;  // sub: (max, sum e^(x - c_s)) of x = s/T and of z/T, D_t; BCE sum
};

__device__ __forceinline__ LossState empty_state() {
  return {-INFINITY, 0.0f, 0.0f, 0.0f, 0.0f, -INFINITY, 0.0f, -INFINITY, 0.0f, 0.0f, 0.0f};
}

__device__ __forceinline__ LossState merge(const LossState& a, const LossState& b) {
  LossState r;
  r.m_z = fmaxf(a.m_z, b.m_z);
  const float c = shift_of(r.m_z);
  r.l_z = a.l_z * expf(a.m_z - c) + b.l_z * expf(b.m_z - c);  // e^(-inf - c) = 0 for an empty state
  r.d_z = a.d_z + a.s_z * (shift_of(a.m_z) - c) + b.d_z + b.s_z * (shift_of(b.m_z) - c);
  r.s_z = a.s_z + b.s_z;
  r.acc_m = a.acc_m + b.acc_m;
  r.m_s = fmaxf(a.m_s, b.m_s);
  r.m_t = fmaxf(a.m_t, b.m_t);
  const float c_s = shift_of(r.m_s), c_t = shift_of(r.m_t);
  r.l_s = a.l_s * expf(a.m_s - c_s) + b.l_s * expf(b.m_s - c_s);
  const float alpha_a = expf(a.m_t - c_t), alpha_b = expf(b.m_t - c_t);
  r.d_t = alpha_a * (a.d_t + a.l_t * (shift_of(a.m_s) - c_s)) + alpha_b * (b.d_t + b.l_t * (shift_of(b.m_s) - c_s));
  r.l_t = a.l_t * alpha_a + b.l_t * alpha_b;
  r.acc_s = a.acc_s + b.acc_s;
  return r;
}

__device__ __forceinline__ LossState shuffle_xor(const LossState& s, int offset) {
  constexpr unsigned kAll = 0xFFFFFFFFu;
  return {__shfl_xor_sync(kAll, s.m_z, offset), __shfl_xor_sync(kAll, s.l_z, offset),
          __shfl_xor_sync(kAll, s.s_z, offset), __shfl_xor_sync(kAll, s.d_z, offset),
          __shfl_xor_sync(kAll, s.acc_m, offset), __shfl_xor_sync(kAll, s.m_s, offset),
          __shfl_xor_sync(kAll, s.l_s, offset), __shfl_xor_sync(kAll, s.m_t, offset),
          __shfl_xor_sync(kAll, s.l_t, offset), __shfl_xor_sync(kAll, s.d_t, offset),
          __shfl_xor_sync(kAll, s.acc_s, offset)};
}

// The block's merged state, valid in thread 0 (a fixed tree: the same bits on every run).
__device__ __forceinline__ LossState block_merge(LossState state) {
  __shared__ LossState warp_states[kLossWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) state = merge(state, shuffle_xor(state, offset));
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = lane < kLossWarps ? warp_states[lane] : empty_state();
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) state = merge(state, shuffle_xor(state, offset));
  }
  return state;
}

template <typename T>
__global__ void __launch_bounds__(kLossThreads)
    loss_forward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                        float* __restrict__ out) {
  const int64_t row = blockIdx.x, C = p.classes, M = p.rows;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = p.sub_logits != nullptr ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  const bool has_main = p.target_kind != TargetKind::kNone, has_sub = p.sub_logits != nullptr;
  const RowTarget target = row_target(p, row);
  const float inv_t = k.inv_temperature;
  LossState st = empty_state();
  for (int64_t base = threadIdx.x; base < C; base += int64_t{kLossThreads} * kLossChunk) {
    float z[kLossChunk];
    bool ok[kLossChunk];
#pragma unroll
    for (int i = 0; i < kLossChunk; ++i) {
      const int64_t c = base + int64_t{i} * kLossThreads;
      ok[i] = c < C;
      z[i] = ok[i] ? detail::to_acc<float>(z_row[c]) : 0.0f;
    }
    if (has_main) {
      float w[kLossChunk];
#pragma unroll
      for (int i = 0; i < kLossChunk; ++i) {
        w[i] = ok[i] ? main_weight(p, k.smooth, row, base + int64_t{i} * kLossThreads, target.label) : 0.0f;
      }
      if (p.bce) {
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) st.acc_m += ok[i] ? bce_term(z[i], w[i]) : 0.0f;
      } else {
        float chunk_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) chunk_max = ok[i] ? fmaxf(chunk_max, z[i]) : chunk_max;
        const float m_new = fmaxf(st.m_z, chunk_max);
        const float c_old = shift_of(st.m_z), c_new = shift_of(m_new);
        st.l_z *= expf(st.m_z - c_new);
        st.d_z += st.s_z * (c_old - c_new);
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) {
          if (!ok[i]) continue;
          st.l_z += expf(z[i] - c_new);
          if (w[i] != 0.0f) st.d_z += w[i] * (z[i] - c_new);
          st.s_z += w[i];
        }
        st.m_z = m_new;
      }
    }
    if (has_sub) {
      float x[kLossChunk];
#pragma unroll
      for (int i = 0; i < kLossChunk; ++i) {
        x[i] = ok[i] ? detail::to_acc<float>(s_row[base + int64_t{i} * kLossThreads]) * inv_t : 0.0f;
      }
      if (p.bce) {
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) st.acc_s += ok[i] ? bce_term(x[i], sigmoid(z[i] * inv_t)) : 0.0f;
      } else {
        float x_max = -INFINITY, t_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) {
          x_max = ok[i] ? fmaxf(x_max, x[i]) : x_max;
          t_max = ok[i] ? fmaxf(t_max, z[i] * inv_t) : t_max;
        }
        const float ms_new = fmaxf(st.m_s, x_max), mt_new = fmaxf(st.m_t, t_max);
        const float cs_old = shift_of(st.m_s), cs_new = shift_of(ms_new), ct_new = shift_of(mt_new);
        const float alpha_t = expf(st.m_t - ct_new);
        st.d_t = alpha_t * (st.d_t + st.l_t * (cs_old - cs_new));
        st.l_t *= alpha_t;
        st.l_s *= expf(st.m_s - cs_new);
#pragma unroll
        for (int i = 0; i < kLossChunk; ++i) {
          if (!ok[i]) continue;
          const float e_t = expf(z[i] * inv_t - ct_new);
          if (e_t != 0.0f) st.d_t += e_t * (x[i] - cs_new);
          st.l_t += e_t;
          st.l_s += expf(x[i] - cs_new);
        }
        st.m_s = ms_new;
        st.m_t = mt_new;
      }
    }
  }
  st = block_merge(st);
  if (threadIdx.x != 0) return;
  float* o = out + row;  // row k of the output for this row: o[k * M]
  if (has_main) {
    float main;
    if (p.bce) {
      main = st.acc_m / static_cast<float>(C);
    } else {
      main = st.s_z * logf(st.l_z) - st.d_z;  // sum_c w_c (lse - z_c)
      o[kStatShiftZ * M] = shift_of(st.m_z);
      o[kStatLogSumZ * M] = logf(st.l_z);
      o[kStatMassZ * M] = st.s_z;
    }
    o[kLossMain * M] = row_value(target, main);
  }
  if (has_sub) {
    float sub;
    if (p.bce) {
      sub = st.acc_s / static_cast<float>(C);
    } else {
      sub = logf(st.l_s) - st.d_t / st.l_t;  // sum_c p_c (lse(s/T) - s_c/T)
      o[kStatShiftS * M] = shift_of(st.m_s);
      o[kStatLogSumS * M] = logf(st.l_s);
      o[kStatShiftT * M] = shift_of(st.m_t);
      o[kStatLogSumT * M] = logf(st.l_t);
    }
    o[kLossSub * M] = row_value(target, (p.temperature * p.temperature) * sub);
  }
}

template <typename T>
__global__ void __launch_bounds__(kLossThreads)
    loss_backward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                         const float* __restrict__ out,
                         const float* __restrict__ grad_main, int64_t stride_gm, const float* __restrict__ grad_sub,
                         int64_t stride_gs, T* __restrict__ dz, T* __restrict__ ds) {
  const int64_t row = blockIdx.x, C = p.classes, M = p.rows;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = p.sub_logits != nullptr ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  const RowTarget target = row_target(p, row);  // an ignored row: zero in both gradients; a bad id: NaN
  const float inv_t = k.inv_temperature;
  const float per_class = p.bce ? k.inv_classes : 1.0f;
  const float* o = out + row;
  float g_m = 0.0f, c_z = 0.0f, log_l_z = 0.0f, s_z = 0.0f;
  if (dz != nullptr) {
    g_m = grad_main[row * stride_gm] * per_class;
    c_z = o[kStatShiftZ * M];
    log_l_z = o[kStatLogSumZ * M];
    s_z = o[kStatMassZ * M];
  }
  float g_s = 0.0f, c_s = 0.0f, log_l_s = 0.0f, c_t = 0.0f, log_l_t = 0.0f;
  if (ds != nullptr) {
    g_s = grad_sub[row * stride_gs] * (p.temperature * per_class);
    c_s = o[kStatShiftS * M];
    log_l_s = o[kStatLogSumS * M];
    c_t = o[kStatShiftT * M];
    log_l_t = o[kStatLogSumT * M];
  }
  // A bad class id: NaN upstream gradients make the row NaN (NaN times anything), as row_value does in the forward;
  // set once here rather than tested per element, which costs registers (spills on sm_90a).
  if (target.bad) g_m = g_s = NAN;
  for (int64_t c = threadIdx.x; c < C; c += kLossThreads) {
    const float z = detail::to_acc<float>(z_row[c]);
    if (dz != nullptr) {
      const float w = main_weight(p, k.smooth, row, c, target.label);
      const float prob = p.bce ? sigmoid(z) : s_z * expf((z - c_z) - log_l_z);
      dz[row * C + c] = detail::from_acc<T>(target.valid ? g_m * (prob - w) : 0.0f);
    }
    if (ds != nullptr) {
      const float x = detail::to_acc<float>(s_row[c]) * inv_t, zt = z * inv_t;
      const float diff = p.bce ? sigmoid(x) - sigmoid(zt) : expf((x - c_s) - log_l_s) - expf((zt - c_t) - log_l_t);
      ds[row * C + c] = detail::from_acc<T>(target.valid ? g_s * diff : 0.0f);
    }
  }
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

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
cudaError_t launch_masksub_loss_forward(const T* logits, const LossProblem& problem, float* out,
                                        cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  loss_forward_kernel<T><<<static_cast<unsigned int>(problem.rows), kLossThreads, 0, stream>>>(
      logits, problem, constants_of(problem), out);
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
  loss_backward_kernel<T><<<static_cast<unsigned int>(problem.rows), kLossThreads, 0, stream>>>(
      logits, problem, constants_of(problem), out, grad_main, stride_grad_main, grad_sub, stride_grad_sub,
      grad_logits, grad_sub_logits);
  return cudaGetLastError();
}

#define MASKSUB_INSTANTIATE_LOSS_OPS(T)                                                                            \
  template cudaError_t launch_masksub_loss_forward<T>(const T*, const LossProblem&, float*, cudaStream_t);        \
  template cudaError_t launch_masksub_loss_backward<T>(const T*, const LossProblem&, const float*, const float*, \
                                                       int64_t, const float*, int64_t, T*, T*, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_LOSS_OPS)
#undef MASKSUB_INSTANTIATE_LOSS_OPS

}  // namespace masksub
