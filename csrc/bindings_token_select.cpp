// masksub_kernels._C: the bindings of token select / gather / scatter (masksub_kernels/ops/token_select.py).
// The checks they share and the module: bindings.h, bindings.cpp.
#include "bindings.h"

namespace masksub::bindings {
namespace {

// An optional bool [B, N] flag of each position (always_keep, drop_first), read in place with its strides: the
// kernel reads its bytes (a same-size dtype view, no copy); absent: no flag.
masksub::PositionFlags position_flags(const std::optional<at::Tensor>& flags, const char* name, int64_t B, int64_t N,
                                      at::Device device) {
  if (!flags) return masksub::kNoPositionFlags;
  check_dtype(*flags, name, {at::kBool});
  TORCH_CHECK_VALUE(flags->dim() == 2 && flags->size(0) == B && flags->size(1) == N, name, " must have shape [", B,
                    ", ", N, "], got ", flags->sizes());
  TORCH_CHECK_VALUE(flags->device() == device, name, " must be on ", device, ", got ", flags->device());
  return {reinterpret_cast<const uint8_t*>(flags->const_data_ptr()), flags->stride(0), flags->stride(1)};
}

}  // namespace

std::tuple<at::Tensor, std::optional<at::Tensor>> select_tokens(int64_t seed,
                                                                const std::optional<at::Tensor>& seed_tensor,
                                                                int64_t batch_size,
                                                                int64_t num_tokens,
                                                                int64_t num_keep,
                                                                bool ordered,
                                                                bool write_inverse,
                                                                at::Device device,
                                                                const std::optional<at::Tensor>& always_keep,
                                                                const std::optional<at::Tensor>& drop_first) {
  check_selection(batch_size, num_tokens, num_keep, "num_tokens", "num_keep");
  device = resolve_device(device);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, device);
  const masksub::PositionFlags keep = position_flags(always_keep, "always_keep", batch_size, num_tokens, device);
  const masksub::PositionFlags drop = position_flags(drop_first, "drop_first", batch_size, num_tokens, device);
  const DeviceGuard guard(device);
  const auto options = at::TensorOptions().device(device);
  at::Tensor ids = at::empty({batch_size, num_keep}, options.dtype(at::kLong));
  std::optional<at::Tensor> inv;
  if (write_inverse) inv = at::empty({batch_size, num_tokens}, options.dtype(at::kInt));
  CHECK_LAUNCH("select_tokens",
               masksub::launch_select_tokens(static_cast<uint64_t>(seed), seed_ptr, batch_size, num_tokens, num_keep,
                                             ordered, keep, drop, ids.mutable_data_ptr<int64_t>(),
                                             inv ? inv->mutable_data_ptr<int32_t>() : nullptr, nullptr,
                                             current_stream(device)));
  return {ids, inv};
}

at::Tensor gather_tokens(const at::Tensor& x, const at::Tensor& ids, int64_t num_prefix_tokens) {
  CHECK_DIM(x, 3, "[batch, prefix + tokens, dim]");
  CHECK_DTYPE(x, FLOAT_DTYPES);
  CHECK_DIM(ids, 2, "[batch, K]");
  CHECK_DTYPE(ids, at::kLong, at::kInt);
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2), P = num_prefix_tokens;
  TORCH_CHECK_VALUE(P >= 0 && P < S, "num_prefix_tokens must be in [0, sequence length ", S,
                    ") so that at least one patch token remains, got ", P);
  const int64_t N = S - P, K = ids.size(1);
  TORCH_CHECK_VALUE(K >= 1 && K <= N, "ids must have 1 <= K <= ", N, " (patch tokens) columns, got shape ",
                    ids.sizes());
  CHECK_SHAPE(ids, B, K);
  CHECK_DEVICE(x);
  CHECK_SAME_DEVICE(ids, x);
  const DeviceGuard guard(x.device());
  const at::Tensor source = last_dim_dense(x);
  at::Tensor y = at::empty({B, P + K, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const cudaStream_t stream = current_stream(x.device());
  dispatch_float(x.scalar_type(), "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (ids.scalar_type() == at::kLong) {
      CHECK_LAUNCH("gather_tokens",
                   masksub::launch_gather_tokens<T, int64_t>(data_of<T>(source), source.stride(0), source.stride(1),
                                                         data_of<int64_t>(ids), ids.stride(0), ids.stride(1),
                                                         mutable_data_of<T>(y), B, P, N, K, D, stream));
    } else {
      CHECK_LAUNCH("gather_tokens",
                   masksub::launch_gather_tokens<T, int32_t>(data_of<T>(source), source.stride(0), source.stride(1),
                                                         data_of<int32_t>(ids), ids.stride(0), ids.stride(1),
                                                         mutable_data_of<T>(y), B, P, N, K, D, stream));
    }
  });
  return y;
}

// (y, ids, inv): the selection of select_tokens (inverse written) and the gather of gather_tokens, one launch where
// N is small (csrc decides).
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_gather_tokens(const at::Tensor& x,
                                                                    int64_t seed,
                                                                    const std::optional<at::Tensor>& seed_tensor,
                                                                    int64_t num_keep,
                                                                    int64_t num_prefix_tokens,
                                                                    bool ordered,
                                                                    const std::optional<at::Tensor>& always_keep,
                                                                    const std::optional<at::Tensor>& drop_first) {
  CHECK_DIM(x, 3, "[batch, prefix + tokens, dim]");
  CHECK_DTYPE(x, FLOAT_DTYPES);
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2), P = num_prefix_tokens;
  TORCH_CHECK_VALUE(P >= 0 && P < S, "num_prefix_tokens must be in [0, sequence length ", S,
                    ") so that at least one patch token remains, got ", P);
  const int64_t N = S - P;
  check_selection(B, N, num_keep, "num_tokens", "num_keep");
  CHECK_DEVICE(x);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, x.device());
  const masksub::PositionFlags keep = position_flags(always_keep, "always_keep", B, N, x.device());
  const masksub::PositionFlags drop = position_flags(drop_first, "drop_first", B, N, x.device());
  const DeviceGuard guard(x.device());
  const at::Tensor source = last_dim_dense(x);
  at::Tensor y = at::empty({B, P + num_keep, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor ids = at::empty({B, num_keep}, x.options().dtype(at::kLong));
  at::Tensor inv = at::empty({B, N}, x.options().dtype(at::kInt));
  const cudaStream_t stream = current_stream(x.device());
  dispatch_float(x.scalar_type(), "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("select_gather_tokens",
                 masksub::launch_select_gather_tokens<T>(
                     static_cast<uint64_t>(seed), seed_ptr, data_of<T>(source), source.stride(0), source.stride(1),
                     mutable_data_of<T>(y), ids.mutable_data_ptr<int64_t>(), inv.mutable_data_ptr<int32_t>(), B, P,
                     N, num_keep, D, ordered, keep, drop, stream));
  });
  return {y, ids, inv};
}

at::Tensor scatter_tokens(const at::Tensor& grad_y, const at::Tensor& inv, int64_t num_prefix_tokens) {
  CHECK_DIM(grad_y, 3, "[batch, prefix + kept tokens, dim]");
  CHECK_DTYPE(grad_y, FLOAT_DTYPES);
  CHECK_DIM(inv, 2, "[batch, tokens]");
  CHECK_DTYPE(inv, at::kInt);
  const int64_t B = grad_y.size(0), D = grad_y.size(2), P = num_prefix_tokens;
  TORCH_CHECK_VALUE(P >= 0 && P < grad_y.size(1), "num_prefix_tokens must be in [0, grad_y.size(1)=", grad_y.size(1),
                    ") so that at least one kept token remains, got ", P);
  const int64_t K = grad_y.size(1) - P, N = inv.size(1);
  TORCH_CHECK_VALUE(N >= K, "inv must have at least K=", K, " (kept tokens) columns, got shape ", inv.sizes());
  CHECK_SHAPE(inv, B, N);
  CHECK_DEVICE(grad_y);
  CHECK_SAME_DEVICE(inv, grad_y);
  const DeviceGuard guard(grad_y.device());
  const at::Tensor source = last_dim_dense(grad_y);
  at::Tensor grad_x = at::empty({B, P + N, D}, grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  const cudaStream_t stream = current_stream(grad_y.device());
  dispatch_float(grad_y.scalar_type(), "grad_y", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("scatter_tokens",
                 masksub::launch_scatter_tokens<T>(data_of<T>(source), source.stride(0), source.stride(1),
                                                   data_of<int32_t>(inv), inv.stride(0), inv.stride(1),
                                                   mutable_data_of<T>(grad_x), B, P, N, K, D, stream));
  });
  return grad_x;
}

}  // namespace masksub::bindings
