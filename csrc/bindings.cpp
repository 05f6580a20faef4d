// masksub_kernels._C: the thin torch layer over the launchers of csrc/masksub_kernels.h.
//
// Each function checks its arguments (messages say what was expected and what came), allocates its outputs with
// torch, sets the device guard, and enqueues the kernels on the current stream of the tensors' device without
// synchronising. Metadata checks (rank, dtype, shape) come before the device checks, so that they can be tested
// without a GPU.
//
// The kernel device (its tensors, guard, current stream and current index) comes from masksub_platform.h, found on
// the include path: csrc/platform/ in the real build (setup.py), csrc/emulator/ in the CUDA emulator's build
// (tools/cuda_emulator.py), where CPU tensors stand for CUDA ones. This file has no conditional compilation: the
// emulator runs every line of it that the GPU build runs.
#include <torch/extension.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>

#include "masksub_kernels.h"
#include "masksub_platform.h"

namespace {

using masksub::platform::current_stream;
using masksub::platform::DeviceGuard;
using masksub::platform::kKernelDevice;
using masksub::platform::kKernelTensor;

// ---------------------------------------------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------------------------------------------

#define CHECK_DEVICE(x) \
  TORCH_CHECK((x).device().type() == kKernelDevice, #x " must be a ", kKernelTensor, ", got ", (x).device())
#define CHECK_SAME_DEVICE(x, ref) \
  TORCH_CHECK((x).device() == (ref).device(), #x " must be on the device of " #ref " (", (ref).device(), "), got ", \
              (x).device())
#define CHECK_CONTIGUOUS(x) \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous, got shape ", (x).sizes(), " strides ", (x).strides())
#define CHECK_DIM(x, n, layout) \
  TORCH_CHECK((x).dim() == (n), #x " must be " layout " (" #n "-D), got shape ", (x).sizes())
#define CHECK_SHAPE(x, ...)                                                                                       \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ", at::IntArrayRef({__VA_ARGS__}), \
              ", got ", (x).sizes())
#define CHECK_DTYPE(x, ...) check_dtype((x), #x, {__VA_ARGS__})
#define CHECK_LAUNCH(op, ...)                                                                            \
  do {                                                                                                   \
    const cudaError_t status_ = (__VA_ARGS__);                                                           \
    TORCH_CHECK(status_ == cudaSuccess, op ": kernel launch failed: ", cudaGetErrorString(status_)); \
  } while (0)

// torch.<name> spelling of a dtype, as Python users read it.
std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kBool:
      return "bool";
    case at::kByte:
      return "uint8";
    default:
      return c10::toString(dtype);
  }
}

// "<name> must be float32, float16 or bfloat16, got int64"
void check_dtype(const at::Tensor& tensor, const char* name, std::initializer_list<at::ScalarType> allowed) {
  for (const at::ScalarType dtype : allowed) {
    if (tensor.scalar_type() == dtype) return;
  }
  std::string expected;
  size_t index = 0;
  for (const at::ScalarType dtype : allowed) {
    expected += (index == 0 ? "" : (index + 1 == allowed.size() ? " or " : ", ")) + dtype_name(dtype);
    ++index;
  }
  TORCH_CHECK(false, name, " must be ", expected, ", got ", dtype_name(tensor.scalar_type()));
}

#define FLOAT_DTYPES at::kFloat, at::kHalf, at::kBFloat16, at::kDouble

// The one dtype dispatch: calls f(TypeTag<T>{}) with T the CUDA element type of `dtype` (at::Half and
// at::BFloat16 share the layout of __half and __nv_bfloat16).
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
decltype(auto) dispatch_float(at::ScalarType dtype, const char* name, F&& f) {
  switch (dtype) {
    case at::kFloat:
      return f(TypeTag<float>{});
    case at::kHalf:
      return f(TypeTag<__half>{});
    case at::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case at::kDouble:
      return f(TypeTag<double>{});
    default:
      TORCH_CHECK(false, name, " must be float32, float16, bfloat16 or float64, got ", dtype_name(dtype));
  }
}

template <typename T>
const T* data_of(const at::Tensor& tensor) {
  return reinterpret_cast<const T*>(tensor.const_data_ptr());
}

template <typename T>
T* mutable_data_of(at::Tensor& tensor) {
  return reinterpret_cast<T*>(tensor.mutable_data_ptr());
}

// Rows are read with their outer strides; only the last (channel / class) stride must be 1.
at::Tensor last_dim_dense(const at::Tensor& tensor) {
  return tensor.size(-1) > 1 && tensor.stride(-1) != 1 ? tensor.contiguous() : tensor;
}

// `value` rounded to the dtype as torch rounds it (torch.tensor(value, dtype=...)), as the kernel's element type.
template <typename T>
T scalar_as(double value, at::ScalarType dtype) {
  const at::Tensor scalar = at::scalar_tensor(value, at::TensorOptions().dtype(dtype));  // host memory, no sync
  T result;
  std::memcpy(&result, scalar.const_data_ptr(), sizeof(T));
  return result;
}

// The device of an output: an index-less "cuda" means the current device.
at::Device resolve_device(at::Device device) {
  TORCH_CHECK(device.type() == kKernelDevice, "device must be a ", at::DeviceTypeName(kKernelDevice), " device, got ",
              device);
  return device.has_index() ? device : at::Device(device.type(), masksub::platform::current_device_index());
}

// The arguments of a per-sample selection of `keep` of `count` positions (tokens or cells).
// Any int64 is a seed (its 64 bits are the Philox key, as for a seed tensor, which may hold any int64): none checked.
void check_selection(int64_t batch_size, int64_t count, int64_t keep, const char* count_name,
                     const char* keep_name) {
  TORCH_CHECK(batch_size >= 0 && batch_size <= INT_MAX, "batch_size must be in [0, 2**31), got ", batch_size);
  TORCH_CHECK(count >= 1 && count <= masksub::kMaxSelectTokens, count_name, " must be in [1, ",
              masksub::kMaxSelectTokens, "], got ", count);
  TORCH_CHECK(keep >= 1 && keep <= count, keep_name, " must be in [1, ", count_name, "=", count, "], got ", keep);
}

// A seed tensor (one int64 on the output's device, read there by the kernel), or null for the int seed.
const int64_t* seed_pointer(const std::optional<at::Tensor>& seed_tensor, at::Device device) {
  if (!seed_tensor) return nullptr;
  TORCH_CHECK(seed_tensor->scalar_type() == at::kLong && seed_tensor->numel() == 1,
              "seed tensor must hold one int64, got ", seed_tensor->scalar_type(), " with ", seed_tensor->numel(),
              " elements");
  TORCH_CHECK(seed_tensor->device() == device, "seed tensor must be on ", device, ", got ", seed_tensor->device());
  return seed_tensor->const_data_ptr<int64_t>();
}

// ---------------------------------------------------------------------------------------------------------------
// Token select / gather / scatter (masksub_kernels/ops/token_select.py)
// ---------------------------------------------------------------------------------------------------------------

// An optional bool [B, N] flag of each position (always_keep, drop_first), read in place with its strides: the
// kernel reads its bytes (a same-size dtype view, no copy); absent: no flag.
masksub::PositionFlags position_flags(const std::optional<at::Tensor>& flags, const char* name, int64_t B, int64_t N,
                                      at::Device device) {
  if (!flags) return masksub::kNoPositionFlags;
  check_dtype(*flags, name, {at::kBool});
  TORCH_CHECK(flags->dim() == 2 && flags->size(0) == B && flags->size(1) == N, name, " must have shape [", B, ", ",
              N, "], got ", flags->sizes());
  TORCH_CHECK(flags->device() == device, name, " must be on ", device, ", got ", flags->device());
  return {reinterpret_cast<const uint8_t*>(flags->const_data_ptr()), flags->stride(0), flags->stride(1)};
}

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
  TORCH_CHECK(P >= 0 && P < S, "num_prefix_tokens must be in [0, sequence length ", S,
              ") so that at least one patch token remains, got ", P);
  const int64_t N = S - P, K = ids.size(1);
  TORCH_CHECK(K >= 1 && K <= N, "ids must have 1 <= K <= ", N, " (patch tokens) columns, got shape ", ids.sizes());
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
  TORCH_CHECK(P >= 0 && P < S, "num_prefix_tokens must be in [0, sequence length ", S,
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
  TORCH_CHECK(P >= 0 && P < grad_y.size(1), "num_prefix_tokens must be in [0, grad_y.size(1)=", grad_y.size(1),
              ") so that at least one kept token remains, got ", P);
  const int64_t K = grad_y.size(1) - P, N = inv.size(1);
  TORCH_CHECK(N >= K, "inv must have at least K=", K, " (kept tokens) columns, got shape ", inv.sizes());
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

// ---------------------------------------------------------------------------------------------------------------
// Grid masks (masksub_kernels/ops/grid_mask.py)
// ---------------------------------------------------------------------------------------------------------------

at::Tensor grid_cell_mask(int64_t seed, const std::optional<at::Tensor>& seed_tensor, int64_t batch_size,
                          int64_t num_cells, int64_t num_keep, at::Device device) {
  check_selection(batch_size, num_cells, num_keep, "num_cells", "num_keep");
  device = resolve_device(device);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, device);
  const DeviceGuard guard(device);
  at::Tensor mask = at::empty({batch_size, num_cells}, at::TensorOptions().device(device).dtype(at::kBool));
  CHECK_LAUNCH("grid_cell_mask",
               masksub::launch_select_tokens(static_cast<uint64_t>(seed), seed_ptr, batch_size, num_cells, num_keep, false,
                                             masksub::kNoPositionFlags, masksub::kNoPositionFlags, nullptr, nullptr,
                                             reinterpret_cast<uint8_t*>(mask.mutable_data_ptr()),
                                             current_stream(device)));
  return mask;
}

// A B x H x W map cut into S x S cells: S >= 1 and H, W multiples of S.
void check_cells(int64_t H, int64_t W, int64_t S, const char* map) {
  TORCH_CHECK(S >= 1, "cell_size must be >= 1, got ", S);
  TORCH_CHECK(H % S == 0 && W % S == 0, map, " of ", H, " x ", W, " is not divisible by cell_size=", S);
}

// The cells of a B x H x W map (check_cells) drawn afresh: num_keep of the (H / S)(W / S) cells kept per sample.
void check_random_cells(int64_t B, int64_t H, int64_t W, int64_t S, int64_t num_keep, const char* map) {
  check_cells(H, W, S, map);
  check_selection(B, (H / S) * (W / S), num_keep, "num_cells", "num_keep");
}

// cell_mask must be bool [B, H / S, W / S] for a B x H x W map (H and W multiples of S); returns it contiguous.
at::Tensor checked_cell_mask(const at::Tensor& cell_mask, int64_t B, int64_t H, int64_t W, int64_t S,
                             const char* map) {
  check_cells(H, W, S, map);
  CHECK_DIM(cell_mask, 3, "[batch, grid_h, grid_w]");
  CHECK_DTYPE(cell_mask, at::kBool);
  CHECK_SHAPE(cell_mask, B, H / S, W / S);
  return cell_mask.contiguous();
}

const uint8_t* cell_bytes(const at::Tensor& cells) { return reinterpret_cast<const uint8_t*>(cells.const_data_ptr()); }

at::Tensor mask_image_grid(const at::Tensor& images, const at::Tensor& cell_mask, int64_t cell_size,
                           double fill_value) {
  CHECK_DIM(images, 4, "[batch, channels, height, width]");
  CHECK_DTYPE(images, FLOAT_DTYPES);
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const at::Tensor cells = checked_cell_mask(cell_mask, B, H, W, cell_size, "images");
  CHECK_DEVICE(images);
  CHECK_SAME_DEVICE(cell_mask, images);
  const DeviceGuard guard(images.device());
  at::Tensor out = at::empty_like(images);  // the input's layout (contiguous or channels_last)
  const masksub::ImageStrides in_strides{images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const masksub::ImageStrides out_strides{out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  dispatch_float(images.scalar_type(), "images", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("mask_image_grid",
                 masksub::launch_mask_image_grid<T>(data_of<T>(images), in_strides, mutable_data_of<T>(out),
                                                    out_strides, cell_bytes(cells), B, C, H, W, cell_size,
                                                    scalar_as<T>(fill_value, images.scalar_type()),
                                                    current_stream(images.device())));
  });
  return out;
}

// The cell mask drawn and the images masked with it (mask_image_grid's one launch where the grid allows).
std::tuple<at::Tensor, at::Tensor> mask_image_grid_random(const at::Tensor& images, int64_t seed,
                                                          const std::optional<at::Tensor>& seed_tensor,
                                                          int64_t cell_size, int64_t num_keep, double fill_value) {
  CHECK_DIM(images, 4, "[batch, channels, height, width]");
  CHECK_DTYPE(images, FLOAT_DTYPES);
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  check_random_cells(B, H, W, cell_size, num_keep, "images");
  const int64_t grid_h = H / cell_size, grid_w = W / cell_size;
  CHECK_DEVICE(images);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, images.device());
  const DeviceGuard guard(images.device());
  at::Tensor out = at::empty_like(images);  // the input's layout (contiguous or channels_last)
  at::Tensor mask = at::empty({B, grid_h, grid_w}, images.options().dtype(at::kBool));
  const masksub::ImageStrides in_strides{images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const masksub::ImageStrides out_strides{out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  dispatch_float(images.scalar_type(), "images", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("mask_image_grid_random",
                 masksub::launch_mask_image_grid_random<T>(
                     data_of<T>(images), in_strides, mutable_data_of<T>(out), out_strides,
                     reinterpret_cast<uint8_t*>(mask.mutable_data_ptr()), static_cast<uint64_t>(seed), seed_ptr,
                     num_keep, B, C, H, W, cell_size, scalar_as<T>(fill_value, images.scalar_type()),
                     current_stream(images.device())));
  });
  return {out, mask};
}

// tokens [B, H, W, C] of a float dtype and a mask token of C elements in the same dtype.
void check_tokens_and_mask_token(const at::Tensor& tokens, const at::Tensor& mask_token) {
  CHECK_DIM(tokens, 4, "[batch, height, width, channels]");
  CHECK_DTYPE(tokens, FLOAT_DTYPES);
  const int64_t C = tokens.size(3);
  TORCH_CHECK(mask_token.numel() == C, "mask_token must have C=", C, " elements, got shape ", mask_token.sizes());
  TORCH_CHECK(mask_token.scalar_type() == tokens.scalar_type(), "mask_token must have the dtype of tokens (",
              dtype_name(tokens.scalar_type()), "), got ", dtype_name(mask_token.scalar_type()));
}

at::Tensor mask_tokens_grid_forward(const at::Tensor& tokens, const at::Tensor& mask_token,
                                    const at::Tensor& cell_mask, int64_t cell_size) {
  check_tokens_and_mask_token(tokens, mask_token);
  const int64_t B = tokens.size(0), H = tokens.size(1), W = tokens.size(2), C = tokens.size(3);
  const at::Tensor cells = checked_cell_mask(cell_mask, B, H, W, cell_size, "tokens");
  CHECK_DEVICE(tokens);
  CHECK_SAME_DEVICE(mask_token, tokens);
  CHECK_SAME_DEVICE(cell_mask, tokens);
  const DeviceGuard guard(tokens.device());
  const at::Tensor source = last_dim_dense(tokens);
  const at::Tensor token = mask_token.reshape({C}).contiguous();
  at::Tensor out = at::empty({B, H, W, C}, tokens.options().memory_format(at::MemoryFormat::Contiguous));
  dispatch_float(tokens.scalar_type(), "tokens", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("mask_tokens_grid_forward",
                 masksub::launch_mask_tokens_grid_forward<T>(
                     data_of<T>(source), source.stride(0), source.stride(1), source.stride(2), data_of<T>(token),
                     cell_bytes(cells), mutable_data_of<T>(out), B, H, W, C, cell_size,
                     current_stream(tokens.device())));
  });
  return out;
}

// The cell mask drawn and the tokens masked with it (mask_tokens_grid_forward's one launch where the grid allows).
std::tuple<at::Tensor, at::Tensor> mask_tokens_grid_random(const at::Tensor& tokens, const at::Tensor& mask_token,
                                                           int64_t seed, const std::optional<at::Tensor>& seed_tensor,
                                                           int64_t cell_size, int64_t num_keep) {
  check_tokens_and_mask_token(tokens, mask_token);
  const int64_t B = tokens.size(0), H = tokens.size(1), W = tokens.size(2), C = tokens.size(3);
  check_random_cells(B, H, W, cell_size, num_keep, "tokens");
  const int64_t grid_h = H / cell_size, grid_w = W / cell_size;
  CHECK_DEVICE(tokens);
  CHECK_SAME_DEVICE(mask_token, tokens);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, tokens.device());
  const DeviceGuard guard(tokens.device());
  const at::Tensor source = last_dim_dense(tokens);
  const at::Tensor token = mask_token.reshape({C}).contiguous();
  at::Tensor out = at::empty({B, H, W, C}, tokens.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor mask = at::empty({B, grid_h, grid_w}, tokens.options().dtype(at::kBool));
  dispatch_float(tokens.scalar_type(), "tokens", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("mask_tokens_grid_random",
                 masksub::launch_mask_tokens_grid_random<T>(
                     data_of<T>(source), source.stride(0), source.stride(1), source.stride(2), data_of<T>(token),
                     reinterpret_cast<uint8_t*>(mask.mutable_data_ptr()), static_cast<uint64_t>(seed), seed_ptr,
                     num_keep, mutable_data_of<T>(out), B, H, W, C, cell_size, current_stream(tokens.device())));
  });
  return {out, mask};
}

std::tuple<at::Tensor, at::Tensor> mask_tokens_grid_backward(const at::Tensor& grad_out, const at::Tensor& cell_mask,
                                                             int64_t cell_size, bool need_tokens_grad,
                                                             bool need_mask_grad) {
  CHECK_DIM(grad_out, 4, "[batch, height, width, channels]");
  CHECK_DTYPE(grad_out, FLOAT_DTYPES);
  const int64_t B = grad_out.size(0), H = grad_out.size(1), W = grad_out.size(2), C = grad_out.size(3);
  const at::Tensor cells = checked_cell_mask(cell_mask, B, H, W, cell_size, "grad_out");
  CHECK_DEVICE(grad_out);
  CHECK_SAME_DEVICE(cell_mask, grad_out);
  const DeviceGuard guard(grad_out.device());
  const auto options = grad_out.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_tokens = need_tokens_grad ? at::empty({B, H, W, C}, options) : at::empty({0}, options);
  at::Tensor grad_mask = at::empty({need_mask_grad ? C : 0}, options);
  if (!need_tokens_grad && !need_mask_grad) return {grad_tokens, grad_mask};
  const at::Tensor source = last_dim_dense(grad_out);
  const int64_t parts = need_mask_grad ? masksub::mask_token_grad_parts(B, H, cell_size) : 0;
  const auto accumulator = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partials = at::empty({C, parts}, options.dtype(accumulator));  // workspace of the fixed-order sum
  dispatch_float(grad_out.scalar_type(), "grad_out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("mask_tokens_grid_backward",
                 masksub::launch_mask_tokens_grid_backward<T>(
                     data_of<T>(source), source.stride(0), source.stride(1), source.stride(2), cell_bytes(cells),
                     need_tokens_grad ? mutable_data_of<T>(grad_tokens) : nullptr,
                     need_mask_grad ? mutable_data_of<T>(grad_mask) : nullptr, partials.mutable_data_ptr(), B, H, W,
                     C, cell_size, current_stream(grad_out.device())));
  });
  return {grad_tokens, grad_mask};
}

// ---------------------------------------------------------------------------------------------------------------
// MaskSub loss (masksub_kernels/ops/masksub_loss.py)
// ---------------------------------------------------------------------------------------------------------------

masksub::TargetKind target_kind_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kLong:
      return masksub::TargetKind::kLabelsInt64;
    case at::kInt:
      return masksub::TargetKind::kLabelsInt32;
    case at::kFloat:
      return masksub::TargetKind::kFloat32;
    case at::kHalf:
      return masksub::TargetKind::kFloat16;
    case at::kBFloat16:
      return masksub::TargetKind::kBFloat16;
    default:
      return masksub::TargetKind::kFloat64;
  }
}

// The checked operands of the loss (unit class stride) and the kernels' description of the problem.
struct LossOperands {
  at::Tensor logits, sub_logits, target;  // undefined when absent
  masksub::LossProblem problem;
};

LossOperands loss_operands(const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits_opt,
                           const std::optional<at::Tensor>& target_opt, bool bce, double label_smoothing,
                           int64_t ignore_index, double temperature, std::optional<double> target_threshold) {
  CHECK_DIM(logits, 2, "[rows, classes]");
  CHECK_DTYPE(logits, FLOAT_DTYPES);
  const int64_t M = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C >= 1, "logits must have at least one class, got shape ", logits.sizes());
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "label_smoothing must be in [0, 1], got ",
              label_smoothing);
  TORCH_CHECK(temperature > 0.0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK(!target_threshold || bce, "target_threshold binarises BCE targets: it needs bce=True");
  LossOperands ops;
  if (sub_logits_opt) {
    const at::Tensor& sub_logits = *sub_logits_opt;
    CHECK_SHAPE(sub_logits, M, C);
    TORCH_CHECK(sub_logits.scalar_type() == logits.scalar_type(), "sub_logits must have the dtype of logits (",
                dtype_name(logits.scalar_type()), "), got ", dtype_name(sub_logits.scalar_type()));
    CHECK_SAME_DEVICE(sub_logits, logits);
  }
  if (target_opt) {
    const at::Tensor& target = *target_opt;
    CHECK_DTYPE(target, at::kLong, at::kInt, FLOAT_DTYPES);
    if (target.is_floating_point()) {
      CHECK_SHAPE(target, M, C);
    } else {
      CHECK_SHAPE(target, M);
    }
    CHECK_SAME_DEVICE(target, logits);
  }
  CHECK_DEVICE(logits);
  ops.logits = last_dim_dense(logits);
  masksub::LossProblem& p = ops.problem;
  p = masksub::LossProblem{};
  p.rows = M;
  p.classes = C;
  p.stride_logits = ops.logits.stride(0);
  if (sub_logits_opt) {
    ops.sub_logits = last_dim_dense(*sub_logits_opt);
    p.sub_logits = ops.sub_logits.const_data_ptr();
    p.stride_sub = ops.sub_logits.stride(0);
  }
  p.target_kind = masksub::TargetKind::kNone;
  if (target_opt) {
    ops.target = *target_opt;
    // probabilities reach the kernels in the logits' dtype or fp32: others become fp32 here (exact from fp16 /
    // bf16; from fp64 the rounding the kernels' fp32 arithmetic applies anyway)
    if (ops.target.is_floating_point() && ops.target.scalar_type() != logits.scalar_type()) {
      ops.target = ops.target.to(at::kFloat);
    }
    ops.target = ops.target.is_floating_point() ? last_dim_dense(ops.target) : ops.target;
    p.target = ops.target.const_data_ptr();
    p.stride_target = ops.target.stride(0);
    p.target_kind = target_kind_of(ops.target.scalar_type());
  }
  p.bce = bce;
  p.binarise = target_threshold.has_value();
  p.label_smoothing = static_cast<float>(label_smoothing);
  p.temperature = static_cast<float>(temperature);
  p.threshold = static_cast<float>(target_threshold.value_or(0.0));
  p.ignore_index = ignore_index;
  return ops;
}

at::Tensor masksub_loss_forward(const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits,
                                const std::optional<at::Tensor>& target, bool bce, double label_smoothing,
                                int64_t ignore_index, double temperature, std::optional<double> target_threshold) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  const DeviceGuard guard(logits.device());
  // every entry is written by the kernel (0 for absent terms and BCE's stats): no fill launch
  at::Tensor out = at::empty({masksub::kLossRows, logits.size(0)}, logits.options().dtype(at::kFloat));
  dispatch_float(logits.scalar_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("masksub_loss_forward",
                 masksub::launch_masksub_loss_forward<T>(data_of<T>(ops.logits), ops.problem,
                                                         out.mutable_data_ptr<float>(),
                                                         current_stream(logits.device())));
  });
  return out;
}

// The gradient of a per-row loss, as fp32 [M] with its stride (0 for a broadcast scalar): the kernels' operand.
at::Tensor checked_row_grad(const at::Tensor& grad, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == logits.size(0), name, " must have shape [", logits.size(0),
              "], got ", grad.sizes());
  check_dtype(grad, name, {FLOAT_DTYPES});
  TORCH_CHECK(grad.device() == logits.device(), name, " must be on the device of logits (", logits.device(),
              "), got ", grad.device());
  return grad.to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> masksub_loss_backward(
    const std::optional<at::Tensor>& grad_main, const std::optional<at::Tensor>& grad_sub, const at::Tensor& out,
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  CHECK_DTYPE(out, at::kFloat);
  CHECK_SHAPE(out, masksub::kLossRows, logits.size(0));
  CHECK_CONTIGUOUS(out);
  CHECK_SAME_DEVICE(out, logits);
  TORCH_CHECK(!grad_main || target, "grad_main needs a target: without one there is no main term");
  TORCH_CHECK(!grad_sub || sub_logits, "grad_sub needs sub_logits: without them there is no sub term");
  const at::Tensor gm = grad_main ? checked_row_grad(*grad_main, logits, "grad_main") : at::Tensor();
  const at::Tensor gs = grad_sub ? checked_row_grad(*grad_sub, logits, "grad_sub") : at::Tensor();
  const DeviceGuard guard(logits.device());
  const auto options = logits.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_logits = grad_main ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  at::Tensor grad_sub_logits = grad_sub ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  dispatch_float(logits.scalar_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    CHECK_LAUNCH("masksub_loss_backward",
                 masksub::launch_masksub_loss_backward<T>(
                     data_of<T>(ops.logits), ops.problem, out.const_data_ptr<float>(),
                     grad_main ? gm.const_data_ptr<float>() : nullptr, grad_main ? gm.stride(0) : 0,
                     grad_sub ? gs.const_data_ptr<float>() : nullptr, grad_sub ? gs.stride(0) : 0,
                     grad_main ? mutable_data_of<T>(grad_logits) : nullptr,
                     grad_sub ? mutable_data_of<T>(grad_sub_logits) : nullptr, current_stream(logits.device())));
  });
  return {grad_logits, grad_sub_logits};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "masksub_kernels CUDA extension: the `cuda` backend of masksub_kernels' ops (CUDA tensors only)";
  m.attr("MAX_SELECT_TOKENS") = masksub::kMaxSelectTokens;
  m.def("select_tokens", &select_tokens,
        "(ids int64 [B, K], inv int32 [B, N] or None): per sample the K positions with the smallest Philox draws "
        "(ties by position), ascending-draw order or ascending position when ordered; optional bool [B, N] "
        "always_keep (kept first, by position) and drop_first (dropped first, by position; always_keep wins)",
        py::arg("seed"), py::arg("seed_tensor"), py::arg("batch_size"), py::arg("num_tokens"), py::arg("num_keep"),
        py::arg("ordered"), py::arg("write_inverse"), py::arg("device"), py::arg("always_keep") = py::none(),
        py::arg("drop_first") = py::none());
  m.def("gather_tokens", &gather_tokens,
        "y [B, P+K, D]: y[:, :P] = x[:, :P], y[:, P+j] = x[:, P+ids[:, j]] (x any strides, ids int64 or int32)",
        py::arg("x"), py::arg("ids"), py::arg("num_prefix_tokens"));
  m.def("select_gather_tokens", &select_gather_tokens,
        "(y [B, P+K, D], ids int64 [B, K], inv int32 [B, N]): select_tokens (with inv) then gather_tokens, in one "
        "launch where N is small",
        py::arg("x"), py::arg("seed"), py::arg("seed_tensor"), py::arg("num_keep"), py::arg("num_prefix_tokens"),
        py::arg("ordered"), py::arg("always_keep") = py::none(), py::arg("drop_first") = py::none());
  m.def("scatter_tokens", &scatter_tokens,
        "grad_x [B, P+N, D]: prefix rows and kept rows (via inv) from grad_y, dropped rows zero; each element "
        "written once",
        py::arg("grad_y"), py::arg("inv"), py::arg("num_prefix_tokens"));
  m.def("grid_cell_mask", &grid_cell_mask,
        "bool [B, Lc]: True for the cells each sample removes (all but random_keep_indices' kept cells)",
        py::arg("seed"), py::arg("seed_tensor"), py::arg("batch_size"), py::arg("num_cells"), py::arg("num_keep"),
        py::arg("device"));
  m.def("mask_image_grid", &mask_image_grid,
        "images [B, C, H, W] with the removed cells set to fill_value, in the images' layout",
        py::arg("images"), py::arg("cell_mask"), py::arg("cell_size"), py::arg("fill_value"));
  m.def("mask_image_grid_random", &mask_image_grid_random,
        "(images [B, C, H, W] with the removed cells set to fill_value, in the images' layout; bool cell mask "
        "[B, H / cell_size, W / cell_size], the cells grid_cell_mask removes)",
        py::arg("images"), py::arg("seed"), py::arg("seed_tensor"), py::arg("cell_size"), py::arg("num_keep"),
        py::arg("fill_value"));
  m.def("mask_tokens_grid_forward", &mask_tokens_grid_forward,
        "contiguous [B, H, W, C]: the mask token on removed cells, the tokens elsewhere", py::arg("tokens"),
        py::arg("mask_token"), py::arg("cell_mask"), py::arg("cell_size"));
  m.def("mask_tokens_grid_random", &mask_tokens_grid_random,
        "(contiguous [B, H, W, C]: the mask token on the removed cells, the tokens elsewhere; bool cell mask "
        "[B, H / cell_size, W / cell_size], the cells grid_cell_mask removes)",
        py::arg("tokens"), py::arg("mask_token"), py::arg("seed"), py::arg("seed_tensor"), py::arg("cell_size"),
        py::arg("num_keep"));
  m.def("mask_tokens_grid_backward", &mask_tokens_grid_backward,
        "(grad_tokens [B, H, W, C] or [0], grad_mask_token [C] or [0]); grad_mask_token summed in a fixed order",
        py::arg("grad_out"), py::arg("cell_mask"), py::arg("cell_size"), py::arg("need_tokens_grad"),
        py::arg("need_mask_grad"));
  m.def("masksub_loss_forward", &masksub_loss_forward,
        "fp32 [9, M]: per-row main and sub losses, then the CE stats the backward reads", py::arg("logits"),
        py::arg("sub_logits"), py::arg("target"), py::arg("bce"), py::arg("label_smoothing"),
        py::arg("ignore_index"), py::arg("temperature"), py::arg("target_threshold"));
  m.def("masksub_loss_backward", &masksub_loss_backward,
        "(d logits or [0], d sub_logits or [0]) in the logits' dtype, from the forward's output", py::arg("grad_main"),
        py::arg("grad_sub"), py::arg("out"), py::arg("logits"), py::arg("sub_logits"), py::arg("target"),
        py::arg("bce"), py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("temperature"),
        py::arg("target_threshold"));
}
