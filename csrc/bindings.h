// masksub_kernels._C: what the bindings share. The argument checks, the one dtype dispatch and the declarations
// of the bindings, defined one op per file (bindings_token_select.cpp, bindings_grid_mask.cpp, bindings_loss.cpp)
// and registered with Python in bindings.cpp.
//
// Each binding checks its arguments (messages say what was expected and what came), allocates its outputs with
// torch, sets the device guard, and enqueues the kernels on the current stream of the tensors' device without
// synchronising. Metadata checks (rank, dtype, shape) come before the device checks, so that they can be tested
// without a GPU.
//
// The kernel device (its tensors, guard, current stream and current index) comes from masksub_platform.h, found on
// the include path: csrc/platform/ in the real build (setup.py), csrc/emulator/ in the CUDA emulator's build
// (tools/cuda_emulator.py), where CPU tensors stand for CUDA ones. The bindings have no conditional compilation: the
// emulator runs every line of them that the GPU build runs. Only bindings.cpp includes torch/extension.h (pybind11):
// the op files need ATen alone, which compiles in a third of the time.
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>

#include "masksub_kernels.h"
#include "masksub_platform.h"

namespace masksub::bindings {

using masksub::platform::current_stream;
using masksub::platform::DeviceGuard;
using masksub::platform::kKernelDevice;
using masksub::platform::kKernelTensor;

// ---------------------------------------------------------------------------------------------------------------
// Argument checks: of the kinds the Python backends raise for the same input (TORCH_CHECK_TYPE: TypeError, a wrong
// dtype; TORCH_CHECK_VALUE: ValueError, a wrong shape, size, range or device; helper-205), RuntimeError for what only
// this backend needs (CUDA tensors, contiguity) and failed launches
// ---------------------------------------------------------------------------------------------------------------

#define CHECK_DEVICE(x) \
  TORCH_CHECK((x).device().type() == kKernelDevice, #x " must be a ", kKernelTensor, ", got ", (x).device())
#define CHECK_SAME_DEVICE(x, ref) \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), #x " must be on the device of " #ref " (", (ref).device(),    \
                    "), got ", (x).device())
#define CHECK_CONTIGUOUS(x) \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous, got shape ", (x).sizes(), " strides ", (x).strides())
#define CHECK_DIM(x, n, layout) \
  TORCH_CHECK_VALUE((x).dim() == (n), #x " must be " layout " (" #n "-D), got shape ", (x).sizes())
#define CHECK_SHAPE(x, ...)                                                                                       \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ",                       \
                    at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define CHECK_DTYPE(x, ...) check_dtype((x), #x, {__VA_ARGS__})
#define CHECK_LAUNCH(op, ...)                                                                            \
  do {                                                                                                   \
    const cudaError_t status_ = (__VA_ARGS__);                                                           \
    TORCH_CHECK(status_ == cudaSuccess, op ": kernel launch failed: ", cudaGetErrorString(status_)); \
  } while (0)

// torch.<name> spelling of a dtype, as Python users read it.
inline std::string dtype_name(at::ScalarType dtype) {
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
    default:  // torch's own spelling: int16, float8_e4m3fn, ...
      return std::string(c10::getDtypeNames(dtype).first);
  }
}

// "<name> must be float32, float16 or bfloat16, got int64"
inline void check_dtype(const at::Tensor& tensor, const char* name, std::initializer_list<at::ScalarType> allowed) {
  for (const at::ScalarType dtype : allowed) {
    if (tensor.scalar_type() == dtype) return;
  }
  std::string expected;
  size_t index = 0;
  for (const at::ScalarType dtype : allowed) {
    expected += (index == 0 ? "" : (index + 1 == allowed.size() ? " or " : ", ")) + dtype_name(dtype);
    ++index;
  }
  TORCH_CHECK_TYPE(false, name, " must be ", expected, ", got ", dtype_name(tensor.scalar_type()));
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
      TORCH_CHECK_TYPE(false, name, " must be float32, float16, bfloat16 or float64, got ", dtype_name(dtype));
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
inline at::Tensor last_dim_dense(const at::Tensor& tensor) {
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
inline at::Device resolve_device(at::Device device) {
  TORCH_CHECK(device.type() == kKernelDevice, "device must be a ", at::DeviceTypeName(kKernelDevice), " device, got ",
              device);
  return device.has_index() ? device : at::Device(device.type(), masksub::platform::current_device_index());
}

// The arguments of a per-sample selection of `keep` of `count` positions (tokens or cells).
// Any int64 is a seed (its 64 bits are the Philox key, as for a seed tensor, which may hold any int64): none checked.
inline void check_selection(int64_t batch_size, int64_t count, int64_t keep, const char* count_name,
                            const char* keep_name) {
  TORCH_CHECK_VALUE(batch_size >= 0 && batch_size <= INT_MAX, "batch_size must be in [0, 2**31), got ", batch_size);
  TORCH_CHECK_VALUE(count >= 1 && count <= masksub::kMaxSelectTokens, count_name, " must be in [1, ",
                    masksub::kMaxSelectTokens, "], got ", count);
  TORCH_CHECK_VALUE(keep >= 1 && keep <= count, keep_name, " must be in [1, ", count_name, "=", count, "], got ", keep);
}

// A seed tensor (one int64 on the output's device, read there by the kernel), or null for the int seed.
inline const int64_t* seed_pointer(const std::optional<at::Tensor>& seed_tensor, at::Device device) {
  if (!seed_tensor) return nullptr;
  TORCH_CHECK_TYPE(seed_tensor->scalar_type() == at::kLong && seed_tensor->numel() == 1,
                   "seed tensor must hold one int64, got ", dtype_name(seed_tensor->scalar_type()), " with ",
                   seed_tensor->numel(), " elements");
  TORCH_CHECK_VALUE(seed_tensor->device() == device, "seed tensor must be on ", device, ", got ",
                    seed_tensor->device());
  return seed_tensor->const_data_ptr<int64_t>();
}

// ---------------------------------------------------------------------------------------------------------------
// The bindings (registered in bindings.cpp)
// ---------------------------------------------------------------------------------------------------------------

// Token select / gather / scatter: bindings_token_select.cpp
std::tuple<at::Tensor, std::optional<at::Tensor>> select_tokens(int64_t seed,
                                                                const std::optional<at::Tensor>& seed_tensor,
                                                                int64_t batch_size,
                                                                int64_t num_tokens,
                                                                int64_t num_keep,
                                                                bool ordered,
                                                                bool write_inverse,
                                                                at::Device device,
                                                                const std::optional<at::Tensor>& always_keep,
                                                                const std::optional<at::Tensor>& drop_first);
at::Tensor gather_tokens(const at::Tensor& x, const at::Tensor& ids, int64_t num_prefix_tokens);
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_gather_tokens(const at::Tensor& x,
                                                                    int64_t seed,
                                                                    const std::optional<at::Tensor>& seed_tensor,
                                                                    int64_t num_keep,
                                                                    int64_t num_prefix_tokens,
                                                                    bool ordered,
                                                                    const std::optional<at::Tensor>& always_keep,
                                                                    const std::optional<at::Tensor>& drop_first);
at::Tensor scatter_tokens(const at::Tensor& grad_y, const at::Tensor& inv, int64_t num_prefix_tokens);

// Grid masks: bindings_grid_mask.cpp
at::Tensor grid_cell_mask(int64_t seed, const std::optional<at::Tensor>& seed_tensor, int64_t batch_size,
                          int64_t num_cells, int64_t num_keep, at::Device device);
at::Tensor mask_image_grid(const at::Tensor& images, const at::Tensor& cell_mask, int64_t cell_size,
                           double fill_value);
std::tuple<at::Tensor, at::Tensor> mask_image_grid_random(const at::Tensor& images, int64_t seed,
                                                          const std::optional<at::Tensor>& seed_tensor,
                                                          int64_t cell_size, int64_t num_keep, double fill_value);
at::Tensor mask_tokens_grid_forward(const at::Tensor& tokens, const at::Tensor& mask_token,
                                    const at::Tensor& cell_mask, int64_t cell_size);
std::tuple<at::Tensor, at::Tensor> mask_tokens_grid_random(const at::Tensor& tokens, const at::Tensor& mask_token,
                                                           int64_t seed, const std::optional<at::Tensor>& seed_tensor,
                                                           int64_t cell_size, int64_t num_keep);
std::tuple<at::Tensor, at::Tensor> mask_tokens_grid_backward(const at::Tensor& grad_out, const at::Tensor& cell_mask,
                                                             int64_t cell_size, bool need_tokens_grad,
                                                             bool need_mask_grad);

// MaskSub loss: bindings_loss.cpp
at::Tensor masksub_loss_forward(const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits,
                                const std::optional<at::Tensor>& target, bool bce, double label_smoothing,
                                int64_t ignore_index, double temperature, std::optional<double> target_threshold);
std::tuple<at::Tensor, at::Tensor> masksub_loss_backward(
    const std::optional<at::Tensor>& grad_main, const std::optional<at::Tensor>& grad_sub, const at::Tensor& out,
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masksub_loss_reduced_forward(
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold, double main_weight, double sub_weight, bool mean);
std::tuple<at::Tensor, at::Tensor> masksub_loss_reduced_backward(
    const at::Tensor& grad, bool need_main, bool need_sub, const at::Tensor& divisor, const at::Tensor& out,
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold, double main_weight, double sub_weight);

}  // namespace masksub::bindings
