// The MaskSub loss, forward: per row, both terms' losses and the stats the backward reads (maths and design:
// masksub_loss.cuh).
#include "masksub_loss.cuh"

namespace masksub {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------

// CE: the fields as in the maths above; class ids with smoothing keep sum_c (z_c - c_z) in d_z with the count
// of classes in s_z, the probabilities' fields with w = 1 (shifted sums: a plain sum z less C c_z at the row's
// end overflowed at logits near -FLT_MAX and cancelled at large common offsets; helper-248). BCE: plain sums,
// the main term's in a_z (probabilities: the sum of terms; class ids: p_z = P, l_z = G and n_z = A' = sum z over
// the other classes, N = A' - P at the row's end: accurate to the sums' rounding, w_o <= 1 / C; summing min(z, 0)
// itself cost an instruction per element for nothing a public input reaches, helper-256) and the sub term's in l_s.
struct LossState {
  float m_z, l_z, s_z, d_z, a_z, p_z, n_z;
  float m_s, l_s, m_t, l_t, d_t, m_ninf;
};

__device__ __forceinline__ LossState empty_state() {
  return {-INFINITY, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -INFINITY, 0.0f, -INFINITY, 0.0f, 0.0f, -INFINITY};
}

// The chunk's N classes [c, c + N) (z, and x = s / T) into the thread's state. kLabel: BCE with class ids, the
// chunk may hold the id (label_at: its position, -1 if not); the vector loop's chunks do not (the id's vector is
// peeled), so that they compare no column with it.
template <class V, int N, bool kLabel = true>
__device__ __forceinline__ void fold(LossState& st, const float (&z)[N], const float (&x)[N], const float (&w)[N],
                                     int label_at, float inv_t) {
  if constexpr (V::kBce) {
    // softplus(x) - w x = t x + log1p(exp(-|x|)), t = [x > 0] - w: per element its linear part, per chunk the
    // sum of log1p(exp(-|x|)) (sum_log1p)
    float e_z[N];
#pragma unroll
    for (int i = 0; i < N; ++i) e_z[i] = exp_neg(-fabsf(z[i]));  // exp(-|z|); -inf: 0
    if constexpr (V::kDense) {
      float linear = 0.0f;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float t = (z[i] > 0.0f ? 1.0f : 0.0f) - w[i];
        linear += t != 0.0f ? t * z[i] : 0.0f;  // t = 0 (w = 1 at +inf, w = 0 at -inf): 0, not 0 * inf
      }
      st.a_z += linear + sum_log1p(e_z);
    } else if constexpr (V::kLabels) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float z_other = kLabel && label_at == i ? 0.0f : z[i];  // the id's linear part: once per row
        st.p_z += fmaxf(z_other, 0.0f);
        if constexpr (V::kSmoothed) st.n_z += z_other;  // A' (N = A' - P enters the loss as w_o N)
      }
      st.l_z += sum_log1p(e_z);
    }
    if constexpr (V::kSub) {
      // the sub element less its log1p: with the teacher p = sigmoid(z'), z' = z / T, e = exp(-|z'|) and
      // r = 1 / (1 + e) = sigmoid(|z'|), e r = sigmoid(-|z'|) = 1 - r (no cancellation):
      //   x > 0: (1 - p) |x|,  x <= 0: p |x|,  i.e.  q |x|,  q = e r where x and z' have the same sign, else r
      // (x = 0 or z' = 0 may take either side: the term is 0, or e r = r). q = 0 (|z'| > 87) at x = +-inf is the
      // limit 0, not 0 * inf; a NaN teacher keeps q = NaN. At T = 1 e is the main term's.
      float e_x[N], linear = 0.0f;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        float zt = z[i], e = e_z[i];
        if constexpr (!V::kUnitT) {
          zt = z[i] * inv_t;
          e = exp_neg(-fabsf(zt));
        }
        const float r = reciprocal(1.0f + e);
        const float q = (x[i] > 0.0f) == (zt > 0.0f) ? e * r : r;
        linear += q != 0.0f ? q * fabsf(x[i]) : 0.0f;
        e_x[i] = exp_neg(-fabsf(x[i]));
      }
      st.l_s += linear + sum_log1p(e_x);
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
      } else if constexpr (V::kLabels && V::kSmoothed) {  // w = 1 over every class: the row's end weighs the id's
        st.d_z += st.s_z * (c_z_old - c_new);
#pragma unroll
        for (int i = 0; i < N; ++i) st.d_z += z[i] - c_new;
        st.s_z += static_cast<float>(N);
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
      // the old sum adds nothing where its rescale is 0 (l_t (c_s - c_s') may overflow there)
      float d = alpha_t != 0.0f ? alpha_t * (st.d_t + l_t_before * (cs_old - cs_new)) : 0.0f, ninf = st.m_ninf;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        // e_t (x - c_s) over x != -inf: the select on the difference, then one FFMA (a FMUL, a select and a FADD
        // where the product is selected); a -inf x keeps its teacher logit in m_ninf instead (LossState)
        const bool live = x[i] != -INFINITY;
        d = fmaf(e_t[i], live ? x[i] - cs_new : 0.0f, d);
        ninf = fmaxf(ninf, live ? -INFINITY : (V::kUnitT ? z[i] : z[i] * inv_t));
      }
      st.d_t = d;
      st.m_ninf = ninf;
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
      if constexpr (V::kDense || (V::kLabels && V::kSmoothed)) {
        r.d_z = a.d_z + a.s_z * (shift_of(a.m_z) - c) + b.d_z + b.s_z * (shift_of(b.m_z) - c);
        r.s_z = a.s_z + b.s_z;
      }
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
      // a lane whose teacher mass is 0 about the larger max adds nothing (l_t (c_s,a - c_s) may overflow there)
      r.d_t = (beta_a != 0.0f ? beta_a * (a.d_t + l_ta * (shift_of(a.m_s) - c_s)) : 0.0f) +
              (beta_b != 0.0f ? beta_b * (b.d_t + l_tb * (shift_of(b.m_s) - c_s)) : 0.0f);
      r.m_ninf = fmaxf(a.m_ninf, b.m_ninf);
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
      if constexpr (V::kSmoothed) r.n_z = other(s.n_z);
      r.l_z = other(s.l_z);
    }
    if constexpr (V::kSub) r.l_s = other(s.l_s);
  } else {
    if constexpr (V::kHasMain || V::kUnitT) {
      r.m_z = other(s.m_z);
      r.l_z = other(s.l_z);
    }
    if constexpr (V::kDense || (V::kLabels && V::kSmoothed)) {
      r.s_z = other(s.s_z);
      r.d_z = other(s.d_z);
    }
    if constexpr (V::kSub) {
      r.m_s = other(s.m_s);
      r.l_s = other(s.l_s);
      r.d_t = other(s.d_t);
      r.m_ninf = other(s.m_ninf);
      if constexpr (!V::kUnitT) {
        r.m_t = other(s.m_t);
        r.l_t = other(s.l_t);
      }
    }
  }
  return r;
}

// A block's states merged into one, valid in thread 0 (a fixed tree: the same bits on every run): within each
// warp by shuffles, then across the warps. Every warp merges the warp states, not warp 0 alone: shuffles under a
// branch compile to divergence checks and fallback paths. Lanes past the block's warps hold `empty`, which merges
// as the identity. merge(a, b) and shuffle(s, offset) (another lane's s) are the state's.
template <class S, class Merge, class Shuffle>
__device__ __forceinline__ S block_tree(S state, const S& empty, Merge merge, Shuffle shuffle) {
  __shared__ S warp_states[kLossWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) state = merge(state, shuffle(state, offset));
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  state = lane < warps ? warp_states[lane] : empty;
#pragma unroll
  for (int offset = kLossWarps / 2; offset > 0; offset /= 2) state = merge(state, shuffle(state, offset));
  return state;
}

// The block's merged state (empty states merge as the identity: e^0 = 1, shifts unchanged).
template <class V>
__device__ __forceinline__ LossState block_merge(LossState state) {
  return block_tree(
      state, empty_state(), [](const LossState& a, const LossState& b) { return merge<V>(a, b); },
      [](const LossState& s, int offset) { return shuffle_xor<V>(s, offset); });
}

static_assert(sizeof(LossState) == kLossStateWords * sizeof(float), "the workspace's words per state");

// Few rows, a row over gridDim.y blocks (loss_split): each block's merged state goes to the workspace, row_states
// [splits][kLossStateWords]; thread 0 then takes the row's ticket (an atomic add, after a fence: the state is
// visible before the ticket counts it), and the block that draws the last ticket merges the row's states: thread
// t loads split t's (splits <= threads: loss_split), then block_merge, a fixed order: the same bits on every run,
// whatever order the blocks finished in. The states are read from L2 (__ldcg): other SMs wrote them. Returns
// whether this block is the row's last (the same in every thread), its merged state in thread 0.
template <class V>
__device__ __forceinline__ bool merge_splits(LossState& st, float* row_states, int32_t* ticket) {
  __shared__ bool last;
  const unsigned int splits = gridDim.y;
  float words[kLossStateWords];
  if (threadIdx.x == 0) {
    memcpy(words, &st, sizeof(words));
#pragma unroll
    for (int i = 0; i < kLossStateWords; ++i) row_states[blockIdx.y * kLossStateWords + i] = words[i];
    __threadfence();  // release: the state before the ticket
    last = atomicAdd(ticket, 1) == static_cast<int>(splits) - 1;
    __threadfence();  // acquire: the other splits' states after their tickets
  }
  __syncthreads();  // also ends block_merge's reads of its shared states before the second block_merge
  if (!last) return false;
  LossState split_state = empty_state();
  if (threadIdx.x < splits) {
#pragma unroll
    for (int i = 0; i < kLossStateWords; ++i) words[i] = __ldcg(row_states + threadIdx.x * kLossStateWords + i);
    memcpy(&split_state, words, sizeof(words));
  }
  st = block_merge<V>(split_state);
  return true;
}

// Classes [c, c + N) of the row (N: a vector, or 1) into the state (kLabel: fold's).
template <typename T, class V, int N, bool kLabel = true>
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
  fold<V, N, kLabel>(st, z, x, w, kLabel && V::kBce && V::kLabels ? position_in_chunk<N>(t.label, c) : -1,
                     k.inv_temperature);
}

// The row's output column from its merged state (thread 0): the losses and the CE stats.
template <typename T, class V>
__device__ __forceinline__ void store_row(LossState st, const T* z_row, const LossProblem& p, const LossConstants& k,
                                          const RowTarget& target, float* o) {
  const int64_t C = p.classes, M = p.rows;  // row k of the output for this row: o[k * M]
  if constexpr (V::kUnitT && !V::kBce) {  // the teacher's max and sum are the main term's
    st.m_t = st.m_z;
    st.l_t = st.l_z;
  }
  float main = 0.0f, sub = 0.0f, stats[kLossRows] = {};
  if constexpr (V::kHasMain) {
    float z_y = 0.0f;  // class ids: the id's logit, read once
    const bool has_y = V::kLabels && target.label >= 0 && target.label < C;
    if (has_y) z_y = detail::to_acc<float>(z_row[target.label]);
    const float w_y = target.w_hit, w_o = target.w_miss;
    if constexpr (V::kBce) {
      float sum = st.a_z;  // probabilities: the sum of the terms
      if constexpr (V::kLabels) {
        // N = A' - P; P = +inf: the row's term is +inf whatever N (A' may be NaN). w_o = 0 skips the term
        // (!kSmoothed: A' not summed)
        const float n = st.p_z == INFINITY ? 0.0f : st.n_z - st.p_z;
        sum = (w_o != 1.0f ? (1.0f - w_o) * st.p_z : 0.0f) - (V::kSmoothed && w_o != 0.0f ? w_o * n : 0.0f) + st.l_z;
        const float t_y = (z_y > 0.0f ? 1.0f : 0.0f) - w_y;  // the id's linear part, as fold's t x
        sum += has_y && t_y != 0.0f ? t_y * z_y : 0.0f;
      }
      main = sum * k.inv_classes;
    } else {
      const float c = shift_of(st.m_z);
      float s_w = st.s_z, d_w = st.d_z;
      if constexpr (V::kLabels) {
        s_w = w_o * static_cast<float>(C) + (has_y ? w_y - w_o : 0.0f);
        // sum w (z - c) = w_o sum (z - c) + (w_y - w_o) (z_y - c), the sum over every class (d_z; w_y >= w_o)
        d_w = w_o != 0.0f ? w_o * st.d_z : 0.0f;
        d_w += has_y && w_y != w_o ? (w_y - w_o) * (z_y - c) : 0.0f;
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
      // a class with x = -inf costs +inf where its teacher probability e^(m_ninf - c_t) / l_t is not 0 in fp32:
      // where its log2 is >= -150 (expf rounds e^v to the smallest subnormal, 2^-149, from v >= -150 ln 2; a
      // compare, not ex2.approx.ftz, which flushes results below 2^-126 to 0)
      const float log2_p = (st.m_ninf - shift_of(st.m_t)) * kLog2e - log2f(st.l_t);
      const float d_t = log2_p >= -150.0f ? -INFINITY : st.d_t;
      sub = logf(st.l_s) - d_t / st.l_t;  // sum_c p_c (lse(s/T) - s_c/T)
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

constexpr int kReduceUnroll = 2;  // the reduction's rows in flight per thread

// The reduction's partial sums: a thread's rows, then the block's (plain sums: the tree's order fixes the bits).
struct RowSums {
  float main, sub;
};

// reduce: after the row's output is stored (by thread 0), the row's tickets (atomic adds after a fence: the row is
// visible before the ticket counts it): tickets[1] counts the rows that count (class ids != ignore_index; integer
// adds: any order gives the same count), tickets[0] the rows done. The block that draws the last ticket sums every
// row's main and sub loss in a fixed order, whatever order the rows finished in: thread t rows t, t + B, ... (B
// threads), then block_tree. Every block runs the sums and the tree, the others over no rows: its shuffles stay
// outside any branch (nvcc's divergence fallback under one costs registers). The losses and the count are read
// from L2 (__ldcg): other SMs wrote them. Bad class ids (NaN rows) poison both sums.
template <class V>
__device__ __forceinline__ void reduce_rows(const LossProblem& p, const LossReduction& r, const RowTarget& target,
                                            const float* out) {
  __shared__ bool last;
  const bool labels = V::kLabels && has_labels(p);  // the forward's variants: V::kLabels is has_labels(p)
  if (threadIdx.x == 0) {
    if (labels && target.valid) atomicAdd(r.tickets + 1, 1);
    __threadfence();  // release: the row's output and count before the ticket
    last = atomicAdd(r.tickets, 1) == static_cast<int>(p.rows) - 1;
    __threadfence();  // acquire: the other rows' outputs after their tickets
  }
  __syncthreads();
  const int64_t M = p.rows, summed = last ? M : 0, threads = blockDim.x;
  RowSums sums{0.0f, 0.0f};
  // kReduceUnroll rows in flight per thread (their loads issued together: one L2 latency per iteration, not per
  // row), then added in row order
  for (int64_t first = threadIdx.x; first < summed; first += kReduceUnroll * threads) {
    RowSums rows[kReduceUnroll] = {};
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      const int64_t row = first + u * threads;
      if (row < summed) rows[u] = {__ldcg(out + kLossMain * M + row), __ldcg(out + kLossSub * M + row)};
    }
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      if (first + u * threads < summed) {
        sums.main += rows[u].main;
        sums.sub += rows[u].sub;
      }
    }
  }
  sums = block_tree(
      sums, RowSums{0.0f, 0.0f},
      [](const RowSums& a, const RowSums& b) { return RowSums{a.main + b.main, a.sub + b.sub}; },
      [](const RowSums& s, int offset) {
        return RowSums{__shfl_xor_sync(0xFFFFFFFFu, s.main, offset), __shfl_xor_sync(0xFFFFFFFFu, s.sub, offset)};
      });
  if (!last || threadIdx.x != 0) return;
  // the rows that count: class ids' count, else (probabilities, no target) every row
  const int32_t counted = labels ? __ldcg(r.tickets + 1) : static_cast<int32_t>(M);
  const float d = r.mean ? static_cast<float>(counted > 1 ? counted : 1) : 1.0f;
  const float main = sums.main / d, sub = sums.sub / d;
  r.reduced[0] = fmaf(r.main_weight, main, r.sub_weight * sub);
  r.reduced[1] = main;
  r.reduced[2] = sub;
  r.reduced[3] = d;
  *r.divisor = d;
}

// kSplit: rows over gridDim.y blocks merged through the workspace (a template parameter, so that the one-block
// rows' instance carries none of that code). reduce.reduced null: the per-row losses only (a uniform branch).
template <typename T, class V, bool kSplit>
__global__ void __launch_bounds__(kLossThreads)
    loss_forward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                        float* __restrict__ out, float* __restrict__ workspace, int32_t* __restrict__ tickets,
                        int64_t split_vectors, const LossReduction reduce) {
  constexpr int W = Pack<T>::kWidth;
  const int64_t row = blockIdx.x, C = p.classes;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = V::kSub ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  const RowTarget target = row_target<V>(p, k.smooth, row);
  const typename V::Target* y_row = V::kDense ? target_row<V>(p, row) : nullptr;
  const RowSpan span = row_span(z_row, offset_bits(z_row, s_row), y_row, C);
  LossState st = empty_state();
  // split blockIdx.y takes the row's vectors [begin, end), split_vectors of them; split 0 also the scalar classes
  const int threads = blockDim.x;
  const int64_t begin = kSplit ? split_vectors * blockIdx.y : 0;
  const int64_t end = kSplit && begin + split_vectors < span.vectors ? begin + split_vectors : span.vectors;
  // BCE with class ids: the vector holding the id (peeled, -1 if none) is left out of the loop, whose chunks then
  // compare no column with the id, and folded after it by thread 0 of its split
  constexpr bool kPeel = V::kBce && V::kLabels;
  // modular, as the GPU computes it: an unchecked id near INT64_MIN must not overflow int64 (undefined; helper-248)
  const int64_t from_head =
      static_cast<int64_t>(static_cast<uint64_t>(target.label) - static_cast<uint64_t>(span.head));
  const int64_t peeled = kPeel && from_head >= 0 && from_head < span.vectors * W ? from_head / W : -1;
  for (int64_t v = begin + threadIdx.x; v < end; v += int64_t{threads} * kLossUnroll) {
#pragma unroll
    for (int u = 0; u < kLossUnroll; ++u) {
      const int64_t vector = v + int64_t{u} * threads;
      if (vector < end && (!kPeel || vector != peeled)) {
        forward_chunk<T, V, W, !kPeel>(st, z_row, s_row, p, k, y_row, target, span.head + vector * W);
      }
    }
  }
  if constexpr (kPeel) {
    if (threadIdx.x == 0 && peeled >= begin && peeled < end) {
      forward_chunk<T, V, W>(st, z_row, s_row, p, k, y_row, target, span.head + peeled * W);
    }
  }
  const int64_t scalar = !kSplit || blockIdx.y == 0 ? span.scalar : 0;
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < scalar; i += threads) {
    forward_chunk<T, V, 1>(st, z_row, s_row, p, k, y_row, target, span.scalar_class(i, W));
  }
  st = block_merge<V>(st);
  if constexpr (kSplit) {
    if (!merge_splits<V>(st, workspace + row * gridDim.y * kLossStateWords, tickets + row)) return;
  }
  if (threadIdx.x == 0) store_row<T, V>(st, z_row, p, k, target, out + row);
  if (reduce.reduced != nullptr) reduce_rows<V>(p, reduce, target, out);
}

// Threads and split of the forward: rows that the backward would split (loss_split at loss_threads) go over blocks
// of kLossSplitThreads, so that each warp has more of the row (C = 128256 bf16, M = 8: 32 splits of 4096 classes,
// 2 iterations of 4 warps rather than 1 of 8), as each warp of a block also pays a fixed cost (the block merge,
// the ticket): half of it per class. One-block rows take at most kLossSplitThreads as well, for the same fixed
// cost (C = 21841 bf16: 11 iterations of 4 warps rather than 6 of 8; the row's vectors and split are unchanged).
constexpr int kLossSplitThreads = 128;

struct ForwardLaunch {
  int threads;
  LossSplit split;
};

template <typename T>
ForwardLaunch forward_launch(const LossProblem& p) {
  const int threads = loss_threads<T>(p.classes);
  const LossSplit whole = loss_split<T>(p.rows, p.classes, threads);
  if (whole.splits == 1) return {threads < kLossSplitThreads ? threads : kLossSplitThreads, whole};
  return {kLossSplitThreads, loss_split<T>(p.rows, p.classes, kLossSplitThreads)};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launcher (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
int64_t masksub_loss_forward_splits(const LossProblem& problem) {
  return valid_problem(problem) && problem.rows > 0 ? forward_launch<T>(problem).split.splits : 1;
}

template <typename T>
cudaError_t launch_masksub_loss_forward(const T* logits, const LossProblem& problem, float* out, float* workspace,
                                        int32_t* tickets, const LossReduction* reduce, cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  if (reduce != nullptr && (reduce->reduced == nullptr || reduce->divisor == nullptr || reduce->tickets == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (problem.rows == 0) return cudaSuccess;  // reduce: the caller's (0 losses, d = 1), no block to write them
  // few rows: each row over split.splits blocks, their states merged through the workspace by the row's last block
  const ForwardLaunch config = forward_launch<T>(problem);
  const LossSplit split = config.split;
  if (split.splits > 1 && (workspace == nullptr || tickets == nullptr)) return cudaErrorInvalidValue;
  const LossReduction reduction = reduce != nullptr ? *reduce : LossReduction{};
  const bool launched = with_variant<T>(problem, [&](auto variant) {
    using V = decltype(variant);
    const dim3 grid(static_cast<unsigned int>(problem.rows), static_cast<unsigned int>(split.splits));
    const LossConstants k = constants_of(problem);
    if (split.splits > 1) {
      loss_forward_kernel<T, V, true><<<grid, config.threads, 0, stream>>>(logits, problem, k, out, workspace,
                                                                            tickets, split.split_vectors, reduction);
    } else {
      loss_forward_kernel<T, V, false><<<grid, config.threads, 0, stream>>>(logits, problem, k, out, nullptr,
                                                                             nullptr, split.split_vectors, reduction);
    }
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

#define MASKSUB_INSTANTIATE_LOSS_FORWARD(T)                                                                   \
  template int64_t masksub_loss_forward_splits<T>(const LossProblem&);                                      \
  template cudaError_t launch_masksub_loss_forward<T>(const T*, const LossProblem&, float*, float*, int32_t*, \
                                                      const LossReduction*, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_LOSS_FORWARD)
#undef MASKSUB_INSTANTIATE_LOSS_FORWARD

}  // namespace masksub
