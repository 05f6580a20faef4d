// masksub_kernels._C: the bindings of the MaskSub loss (masksub_kernels/ops/masksub_loss.py).
// The checks they share and the module: bindings.h, bindings.cpp.
#include "bindings.h"

namespace masksub::bindings {
namespace {

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
  TORCH_CHECK_VALUE(C >= 1, "logits must have at least one class, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, "label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  // the ranges the Python backends take (ops/losses.py: TEMPERATURE_RANGE; a threshold in [0, 1)), so that the
  // kernels' fp32 never meets a temperature that rounds to 0 or inf (helper-205: a failed launch, inf losses)
  TORCH_CHECK_VALUE(temperature >= 0x1p-63 && temperature <= 0x1p13,
                    "temperature must be a finite number > 0, in [2**-63, 2**13], got ", temperature);
  TORCH_CHECK_VALUE(!target_threshold || bce, "target_threshold binarises BCE targets: it needs bce=True");
  TORCH_CHECK_VALUE(!target_threshold || (*target_threshold >= 0.0 && *target_threshold < 1.0),
                    "target_threshold must be a finite number in [0, 1), got ", target_threshold.value_or(0.0));
  LossOperands ops;
  if (sub_logits_opt) {
    const at::Tensor& sub_logits = *sub_logits_opt;
    CHECK_SHAPE(sub_logits, M, C);
    TORCH_CHECK_TYPE(sub_logits.scalar_type() == logits.scalar_type(), "sub_logits must have the dtype of logits (",
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

// The gradient of a per-row loss, as fp32 [M] with its stride (0 for a broadcast scalar): the kernels' operand.
at::Tensor checked_row_grad(const at::Tensor& grad, const at::Tensor& logits, const char* name) {
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == logits.size(0), name, " must have shape [", logits.size(0),
                    "], got ", grad.sizes());
  check_dtype(grad, name, {FLOAT_DTYPES});
  TORCH_CHECK_VALUE(grad.device() == logits.device(), name, " must be on the device of logits (", logits.device(),
                    "), got ", grad.device());
  return grad.to(at::kFloat);
}

// CHECK_LAUNCH for an op name known at run time (the helpers below serve two bindings each).
void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(status));
}

// The forward's launch into out [9, M] (every entry written by the kernel: no fill). Few rows split over blocks:
// their states' workspace (written before it is read) and a ticket per row; `reduce`: the grid's two more.
// The tickets are one zeroed int32 tensor: one fill launch where there are any.
void forward_into(const LossOperands& ops, at::Tensor& out, masksub::LossReduction* reduce, const char* op) {
  const at::Tensor& logits = ops.logits;
  dispatch_float(logits.scalar_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = ops.problem.rows, splits = masksub::masksub_loss_forward_splits<T>(ops.problem);
    const int64_t row_tickets = splits > 1 ? rows : 0, tickets_wanted = row_tickets + (reduce != nullptr ? 2 : 0);
    at::Tensor workspace, tickets;
    if (splits > 1) workspace = at::empty({rows * splits * masksub::kLossStateWords}, out.options());
    if (rows > 0 && tickets_wanted > 0) tickets = at::zeros({tickets_wanted}, out.options().dtype(at::kInt));
    if (reduce != nullptr && rows > 0) reduce->tickets = tickets.mutable_data_ptr<int32_t>() + row_tickets;
    check_launch(op, masksub::launch_masksub_loss_forward<T>(
                         data_of<T>(logits), ops.problem, out.mutable_data_ptr<float>(),
                         splits > 1 ? workspace.mutable_data_ptr<float>() : nullptr,
                         row_tickets > 0 ? tickets.mutable_data_ptr<int32_t>() : nullptr,
                         rows > 0 ? reduce : nullptr, current_stream(logits.device())));
  });
}

// The backward's launch: (d logits or [0], d sub_logits or [0]), contiguous in the logits' dtype. gm / gs: the
// fp32 upstream gradients the kernel reads (undefined: that gradient is not wanted), per row, or with `reduced`
// both the reduced loss's [4].
std::tuple<at::Tensor, at::Tensor> backward_of(const LossOperands& ops, const at::Tensor& out, const at::Tensor& gm,
                                               const at::Tensor& gs, const masksub::LossReducedGrad* reduced,
                                               const char* op) {
  const at::Tensor& logits = ops.logits;
  CHECK_DTYPE(out, at::kFloat);
  CHECK_SHAPE(out, masksub::kLossRows, logits.size(0));
  CHECK_CONTIGUOUS(out);
  CHECK_SAME_DEVICE(out, logits);
  const DeviceGuard guard(logits.device());
  const auto options = logits.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_logits = gm.defined() ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  at::Tensor grad_sub_logits = gs.defined() ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  dispatch_float(logits.scalar_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(op, masksub::launch_masksub_loss_backward<T>(
                         data_of<T>(logits), ops.problem, out.const_data_ptr<float>(),
                         gm.defined() ? gm.const_data_ptr<float>() : nullptr, gm.defined() ? gm.stride(0) : 0,
                         gs.defined() ? gs.const_data_ptr<float>() : nullptr, gs.defined() ? gs.stride(0) : 0,
                         gm.defined() ? mutable_data_of<T>(grad_logits) : nullptr,
                         gs.defined() ? mutable_data_of<T>(grad_sub_logits) : nullptr, reduced,
                         current_stream(logits.device())));
  });
  return {grad_logits, grad_sub_logits};
}

}  // namespace

at::Tensor masksub_loss_forward(const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits,
                                const std::optional<at::Tensor>& target, bool bce, double label_smoothing,
                                int64_t ignore_index, double temperature, std::optional<double> target_threshold) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  const DeviceGuard guard(logits.device());
  at::Tensor out = at::empty({masksub::kLossRows, logits.size(0)}, logits.options().dtype(at::kFloat));
  forward_into(ops, out, nullptr, "masksub_loss_forward");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masksub_loss_reduced_forward(
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold, double main_weight, double sub_weight, bool mean) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  const DeviceGuard guard(logits.device());
  const auto fp32 = logits.options().dtype(at::kFloat);
  at::Tensor out = at::empty({masksub::kLossRows, logits.size(0)}, fp32);
  at::Tensor reduced = at::empty({4}, fp32), divisor = at::empty({1}, fp32);
  if (logits.size(0) == 0) {  // no block runs: 0 losses, d = 1 (device fills: no host-to-device copy)
    reduced.zero_()[3].fill_(1.0);
    divisor.fill_(1.0);
  }
  masksub::LossReduction reduce{reduced.mutable_data_ptr<float>(), divisor.mutable_data_ptr<float>(), nullptr,
                                static_cast<float>(main_weight), static_cast<float>(sub_weight), mean};
  forward_into(ops, out, &reduce, "masksub_loss_reduced_forward");
  return {reduced, out, divisor};
}

std::tuple<at::Tensor, at::Tensor> masksub_loss_backward(
    const std::optional<at::Tensor>& grad_main, const std::optional<at::Tensor>& grad_sub, const at::Tensor& out,
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  TORCH_CHECK_VALUE(!grad_main || target, "grad_main needs a target: without one there is no main term");
  TORCH_CHECK_VALUE(!grad_sub || sub_logits, "grad_sub needs sub_logits: without them there is no sub term");
  const at::Tensor gm = grad_main ? checked_row_grad(*grad_main, logits, "grad_main") : at::Tensor();
  const at::Tensor gs = grad_sub ? checked_row_grad(*grad_sub, logits, "grad_sub") : at::Tensor();
  return backward_of(ops, out, gm, gs, nullptr, "masksub_loss_backward");
}

std::tuple<at::Tensor, at::Tensor> masksub_loss_reduced_backward(
    const at::Tensor& grad, bool need_main, bool need_sub, const at::Tensor& divisor, const at::Tensor& out,
    const at::Tensor& logits, const std::optional<at::Tensor>& sub_logits, const std::optional<at::Tensor>& target,
    bool bce, double label_smoothing, int64_t ignore_index, double temperature,
    std::optional<double> target_threshold, double main_weight, double sub_weight) {
  const LossOperands ops = loss_operands(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature,
                                         target_threshold);
  TORCH_CHECK_VALUE(!need_main || target, "need_main needs a target: without one there is no main term");
  TORCH_CHECK_VALUE(!need_sub || sub_logits, "need_sub needs sub_logits: without them there is no sub term");
  CHECK_SHAPE(grad, 4);
  CHECK_DTYPE(grad, FLOAT_DTYPES);
  CHECK_SAME_DEVICE(grad, logits);
  CHECK_SHAPE(divisor, 1);
  CHECK_DTYPE(divisor, at::kFloat);
  CHECK_SAME_DEVICE(divisor, logits);
  const at::Tensor g = grad.to(at::kFloat);  // the reduced losses are fp32: no conversion
  const masksub::LossReducedGrad reduced{divisor.const_data_ptr<float>(), static_cast<float>(main_weight),
                                         static_cast<float>(sub_weight)};
  return backward_of(ops, out, need_main ? g : at::Tensor(), need_sub ? g : at::Tensor(), &reduced,
                     "masksub_loss_reduced_backward");
}

}  // namespace masksub::bindings
