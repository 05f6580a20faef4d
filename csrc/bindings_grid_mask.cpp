// masksub_kernels._C: the bindings of the grid masks (masksub_kernels/ops/grid_mask.py, token_grid_mask.py).
// The checks they share and the module: bindings.h, bindings.cpp.
#include <cmath>
#include <cstring>
#include <limits>

#include "bindings.h"

namespace masksub::bindings {
namespace {

// The Python ops' bounds on every backend (MAX_GRID_* in masksub_kernels/ops/_grid_checks.py; a test holds them
// equal): B x H rows the kernels count in int (+ 4 x 256), a height and W x C (rows of <= 256 elements) within a GPU
// grid's 65535 blocks on y / z. The launchers' own limits are looser; these make a direct call refused as the
// Python ops refuse it, before anything is allocated (helper-215).
constexpr int64_t kMaxGridRows = (int64_t{1} << 31) - 1025;
constexpr int64_t kMaxGridHeight = 65535;
constexpr int64_t kMaxGridLine = int64_t{65535} * 256;

// A [B, ..., H, W, ...] map of B x H rows of W x C elements within the bounds above.
void check_extent(int64_t B, int64_t H, int64_t W, int64_t C, const char* map) {
  // by division: B x H may pass 2^63 where another dimension is 0 (an empty tensor of any sizes)
  const bool rows_fit = H == 0 || B <= kMaxGridRows / H, line_fits = C == 0 || W <= kMaxGridLine / C;
  TORCH_CHECK_VALUE(rows_fit && H <= kMaxGridHeight && line_fits, map, " must have at most ", kMaxGridRows,
                    " rows (batch x height), a height of at most ", kMaxGridHeight, " and at most ", kMaxGridLine,
                    " elements per row (width x channels) on every backend (int counters, a GPU grid's 65535 ",
                    "blocks): got ", B, " x ", H, " rows of ", W, " x ", C);
}

// A fill value finite in the images' dtype, the largest of which is torch.finfo(dtype).max (fp16: 65504): every
// backend writes it rounded to the dtype, and the Python ops refuse what would round to an infinity.
void check_fill_value(double fill_value, at::ScalarType dtype) {
  double largest = std::numeric_limits<double>::max();
  if (dtype == at::kFloat) largest = std::numeric_limits<float>::max();
  if (dtype == at::kHalf) largest = static_cast<float>(std::numeric_limits<c10::Half>::max());
  if (dtype == at::kBFloat16) largest = static_cast<float>(std::numeric_limits<c10::BFloat16>::max());
  TORCH_CHECK_VALUE(std::isfinite(fill_value) && std::abs(fill_value) <= largest,
                    "fill_value must be finite and within ±", largest, " for ", dtype_name(dtype), " images, got ",
                    fill_value);
}

// A B x H x W map cut into S x S cells: S >= 1 and H, W multiples of S.
void check_cells(int64_t H, int64_t W, int64_t S, const char* map) {
  TORCH_CHECK_VALUE(S >= 1, "cell_size must be >= 1, got ", S);
  const char* verb = map[0] != '\0' && map[std::strlen(map) - 1] == 's' ? " are" : " is";  // as the ops' checks
  TORCH_CHECK_VALUE(H % S == 0 && W % S == 0, map, " of ", H, " x ", W, verb, " not divisible by cell_size=", S);
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

// tokens [B, H, W, C] of a float dtype within the bounds, and a mask token [C] in the same dtype (the ops' shape:
// the public functions reshape [1, ..., 1, C]).
void check_tokens_and_mask_token(const at::Tensor& tokens, const at::Tensor& mask_token) {
  CHECK_DIM(tokens, 4, "[batch, height, width, channels]");
  CHECK_DTYPE(tokens, FLOAT_DTYPES);
  const int64_t C = tokens.size(3);
  check_extent(tokens.size(0), tokens.size(1), tokens.size(2), C, "tokens");
  TORCH_CHECK_VALUE(mask_token.dim() == 1 && mask_token.size(0) == C, "mask_token must have shape [C=", C,
                    "], got shape ", mask_token.sizes());
  TORCH_CHECK_TYPE(mask_token.scalar_type() == tokens.scalar_type(), "mask_token must have the dtype of tokens (",
                   dtype_name(tokens.scalar_type()), "), got ", dtype_name(mask_token.scalar_type()));
}

}  // namespace

at::Tensor grid_cell_mask(int64_t seed, const std::optional<at::Tensor>& seed_tensor, int64_t batch_size,
                          int64_t num_cells, int64_t num_keep, at::Device device) {
  check_selection(batch_size, num_cells, num_keep, "num_cells", "num_keep");
  device = resolve_device(device);
  const int64_t* seed_ptr = seed_pointer(seed_tensor, device);
  const DeviceGuard guard(device);
  at::Tensor mask = at::empty({batch_size, num_cells}, at::TensorOptions().device(device).dtype(at::kBool));
  CHECK_LAUNCH("grid_cell_mask",
               masksub::launch_select_tokens(static_cast<uint64_t>(seed), seed_ptr, batch_size, num_cells, num_keep,
                                             false, masksub::kNoPositionFlags, masksub::kNoPositionFlags, nullptr,
                                             nullptr,
                                             reinterpret_cast<uint8_t*>(mask.mutable_data_ptr()),
                                             current_stream(device)));
  return mask;
}

at::Tensor mask_image_grid(const at::Tensor& images, const at::Tensor& cell_mask, int64_t cell_size,
                           double fill_value) {
  CHECK_DIM(images, 4, "[batch, channels, height, width]");
  CHECK_DTYPE(images, FLOAT_DTYPES);
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  check_extent(B, H, W, C, "images");
  check_fill_value(fill_value, images.scalar_type());
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
  check_extent(B, H, W, C, "images");
  check_fill_value(fill_value, images.scalar_type());
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
  check_extent(B, H, W, C, "grad_out");
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

}  // namespace masksub::bindings
