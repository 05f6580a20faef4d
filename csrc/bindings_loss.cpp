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

// The gradient of a per-row loss, as fp32 [M] with its stride (0 for a broadcast scalar): the kernels' operand.
at::Tensor checked_row_grad(const at::Tensor& grad, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == logits.size(0), name, " must have shape [", logits.size(0),
              "], got ", grad.sizes());
  check_dtype(grad, name, {FLOAT_DTYPES});
  TORCH_CHECK(grad.device() == logits.device(), name, " must be on the device of logits (", logits.device(),
              "), got ", grad.device());
  return grad.to(at::kFloat);
}

}  // namespace

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
    // few rows split over blocks: their states' workspace (written before it is read) and zeroed tickets (a fill)
    const int64_t splits = masksub::masksub_loss_forward_splits<T>(ops.problem);
    at::Tensor workspace, tickets;
    if (splits > 1) {
      workspace = at::empty({ops.problem.rows * splits * masksub::kLossStateWords}, out.options());
      tickets = at::zeros({ops.problem.rows}, out.options().dtype(at::kInt));
    }
    CHECK_LAUNCH("masksub_loss_forward",
                 masksub::launch_masksub_loss_forward<T>(
                     data_of<T>(ops.logits), ops.problem, out.mutable_data_ptr<float>(),
                     splits > 1 ? workspace.mutable_data_ptr<float>() : nullptr,
                     splits > 1 ? tickets.mutable_data_ptr<int32_t>() : nullptr, current_stream(logits.device())));
  });
  return out;
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

}  // namespace masksub::bindings
