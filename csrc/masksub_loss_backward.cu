// The MaskSub loss, backward: both gradients recomputed from the logits and the forward's stats (maths and design:
// masksub_loss.cuh).
#include "masksub_loss.cuh"

namespace masksub {
namespace {

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

// The upstream gradient of a row's loss of term `term` (1 main, 2 sub): g[row] (stride: 0 for a broadcast
// scalar); for the reduced loss (divisor not null), g its gradient [4], the same for every row: (w g_0 + g_term) / d.
__device__ __forceinline__ float row_grad(const float* g, int64_t stride, int64_t row, const float* divisor, float w,
                                          int term) {
  if (divisor == nullptr) return g[row * stride];
  return fmaf(w, g[0], g[term * stride]) / *divisor;
}

template <typename T, class V>
__global__ void __launch_bounds__(kLossThreads)
    loss_backward_kernel(const T* __restrict__ logits, const LossProblem p, const LossConstants k,
                         const float* __restrict__ out,
                         const float* __restrict__ grad_main, int64_t stride_gm, const float* __restrict__ grad_sub,
                         int64_t stride_gs, T* __restrict__ dz, T* __restrict__ ds, int64_t split_vectors,
                         const LossReducedGrad reduced) {
  constexpr int W = Pack<T>::kWidth;
  const int64_t row = blockIdx.x, C = p.classes, M = p.rows;
  const T* z_row = logits + row * p.stride_logits;
  const T* s_row = p.sub_logits != nullptr ? static_cast<const T*>(p.sub_logits) + row * p.stride_sub : nullptr;
  T* dz_row = dz != nullptr ? dz + row * C : nullptr;
  T* ds_row = ds != nullptr ? ds + row * C : nullptr;
  const RowTarget target = row_target<V>(p, k.smooth, row);
  const typename V::Target* y_row = V::kDense ? target_row<V>(p, row) : nullptr;
  const float per_class = V::kBce ? k.inv_classes : 1.0f;
  const float* o = out + row;
  RowGrad g{};
  if (dz != nullptr) {
    g = {row_grad(grad_main, stride_gm, row, reduced.divisor, reduced.main_weight, 1) * per_class,
         o[kStatShiftZ * M], o[kStatLogSumZ * M] * kLog2e, o[kStatMassZ * M]};
  }
  if (ds != nullptr) {
    g.g_s = row_grad(grad_sub, stride_gs, row, reduced.divisor, reduced.sub_weight, 2) *
            (p.temperature * per_class);
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
  // split blockIdx.y takes the row's vectors [begin, end), split_vectors of them (few rows: the row's classes
  // spread over more blocks); split 0 also the scalar classes
  const int threads = blockDim.x;
  const int64_t begin = split_vectors * blockIdx.y;
  const int64_t end = begin + split_vectors < span.vectors ? begin + split_vectors : span.vectors;
  for (int64_t v = begin + threadIdx.x; v < end; v += int64_t{threads} * kLossUnroll) {
#pragma unroll
    for (int u = 0; u < kLossUnroll; ++u) {
      const int64_t vector = v + int64_t{u} * threads;
      if (vector < end) {
        backward_chunk<T, V, W>(z_row, s_row, dz_row, ds_row, p, k, y_row, target, g, span.head + vector * W);
      }
    }
  }
  if (blockIdx.y != 0) return;
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < span.scalar; i += threads) {
    backward_chunk<T, V, 1>(z_row, s_row, dz_row, ds_row, p, k, y_row, target, g, span.scalar_class(i, W));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launcher (masksub_kernels.h)
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
cudaError_t launch_masksub_loss_backward(const T* logits, const LossProblem& problem, const float* out,
                                         const float* grad_main, int64_t stride_grad_main, const float* grad_sub,
                                         int64_t stride_grad_sub, T* grad_logits, T* grad_sub_logits,
                                         const LossReducedGrad* reduced, cudaStream_t stream) {
  if (!valid_problem(problem)) return cudaErrorInvalidValue;
  if (problem.rows == 0 || (grad_logits == nullptr && grad_sub_logits == nullptr)) return cudaSuccess;
  if ((grad_logits != nullptr && grad_main == nullptr) ||
      (grad_sub_logits != nullptr && (grad_sub == nullptr || problem.sub_logits == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (reduced != nullptr && reduced->divisor == nullptr) return cudaErrorInvalidValue;
  // Few rows: each row's classes split over blocks (grid (M, splits): loss_split). The loop depends on CE / BCE and
  // the target only (its sub term is there when ds is wanted, and T is a runtime factor): one instance per
  // (bce, target), the sub flags fixed.
  const int threads = loss_threads<T>(problem.classes);
  const LossSplit split = loss_split<T>(problem.rows, problem.classes, threads);
  const bool launched = with_variant<T>(problem, [&](auto variant) {
    using Variant = decltype(variant);
    using V = LossVariant<Variant::kBce, Variant::kDense ? Main::kDense : Main::kLabels, true, false,
                          typename Variant::Target>;
    const dim3 grid(static_cast<unsigned int>(problem.rows), static_cast<unsigned int>(split.splits));
    loss_backward_kernel<T, V><<<grid, threads, 0, stream>>>(
        logits, problem, constants_of(problem), out, grad_main, stride_grad_main, grad_sub, stride_grad_sub,
        grad_logits, grad_sub_logits, split.split_vectors, reduced != nullptr ? *reduced : LossReducedGrad{});
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

#define MASKSUB_INSTANTIATE_LOSS_BACKWARD(T)                                                                       \
  template cudaError_t launch_masksub_loss_backward<T>(const T*, const LossProblem&, const float*, const float*, \
                                                       int64_t, const float*, int64_t, T*, T*,                 \
                                                       const LossReducedGrad*, cudaStream_t);
MASKSUB_FLOAT_TYPES(MASKSUB_INSTANTIATE_LOSS_BACKWARD)
#undef MASKSUB_INSTANTIATE_LOSS_BACKWARD

}  // namespace masksub
