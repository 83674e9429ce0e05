// The one file that talks to torch: registers torch.ops.flashrnn_alternating.{forward,backward}
// (CUDA only) over the plain C++ API of csrc/alternating/alternating.h.
//
// The Python side (flashrnn_compile/kernels/alternating.py) allocates the outputs, so that tests
// can poison them; this file checks every tensor, makes inputs contiguous, allocates the
// workspaces and queues the kernels on the current stream of the inputs' device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "alternating/alternating.h"

namespace {

using flashrnn::alternating::DType;

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: break;
  }
  TORCH_CHECK(false, "flashrnn_alternating: ", name, ": expected float32, bfloat16 or float16, got ",
              t.scalar_type());
}

void check(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
           const at::Device& device, bool may_be_empty = false) {
  if (may_be_empty && t.numel() == 0) return;
  TORCH_CHECK(t.device() == device, "flashrnn_alternating: ", name, ": expected device ", device,
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "flashrnn_alternating: ", name, ": expected dtype ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "flashrnn_alternating: ", name, ": expected shape ", shape,
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "flashrnn_alternating: ", name, ": expected a contiguous tensor");
}

int cell_size(int (*count)(const std::string&), const std::string& functor) {
  const int n = count(functor);
  TORCH_CHECK(n > 0, "flashrnn_alternating: functor: no CUDA cell named '", functor,
              "' (expected a functor of csrc/common/cells.cuh)");
  return n;
}

// What both entry points read off gx and the functor: the cell's gates G and states S, the device,
// dtype and the sizes T, B, NH, DH of gx [T, B, NH, G, DH]; and step_kernel checked (0 or 1).
struct Call {
  int G, S;
  at::Device dev;
  DType dtype;
  at::ScalarType st;
  int64_t T, B, NH, DH;
  bool step;
};

Call describe(const at::Tensor& gx, const std::string& functor, int64_t step_kernel) {
  const int G = cell_size(flashrnn::alternating::num_gates, functor);
  const int S = cell_size(flashrnn::alternating::num_states, functor);
  TORCH_CHECK(gx.dim() == 5 && gx.size(3) == G, "flashrnn_alternating: gx: expected [T, B, NH, ", G,
              ", DH], got ", gx.sizes());
  TORCH_CHECK(gx.device().is_cuda(), "flashrnn_alternating: gx: expected a CUDA tensor, got ", gx.device());
  TORCH_CHECK(step_kernel == 0 || step_kernel == 1, "flashrnn_alternating: step_kernel: expected 0 or 1, got ",
              step_kernel);
  return {G, S, gx.device(), dtype_of(gx, "gx"), gx.scalar_type(),
          gx.size(0), gx.size(1), gx.size(2), gx.size(4), step_kernel == 1};
}

flashrnn::alternating::Shape shape_of(const Call& c) {
  return {static_cast<int>(c.T), static_cast<int>(c.B), static_cast<int>(c.NH), static_cast<int>(c.DH)};
}

// gx [T, B, NH, G, DH], R [NH, G, DH, DH], b [NH, G, DH], s0 [S, B, NH, DH] ->
// writes h [T, B, NH, DH], sT [S, B, NH, DH], states_in [T, S, B, NH, DH] and rhb [T, B, NH, G, DH]
// (fp32; both empty: save=false); step_kernel: 1 = one launch per step (step_forward.cu), 0 = cuBLAS
void forward(const at::Tensor& gx_, const at::Tensor& R_, const at::Tensor& b_, const at::Tensor& s0_,
             const std::string& functor, bool reverse, at::Tensor& h, at::Tensor& sT,
             at::Tensor& states_in, at::Tensor& rhb, int64_t step_kernel) {
  const Call c = describe(gx_, functor, step_kernel);
  const auto& [G, S, dev, dtype, st, T, B, NH, DH, step] = c;
  c10::cuda::CUDAGuard guard(dev);
  at::Tensor gx = gx_.contiguous(), R = R_.contiguous(), b = b_.contiguous(), s0 = s0_.contiguous();
  check(R, "R", {NH, G, DH, DH}, st, dev);
  check(b, "b", {NH, G, DH}, st, dev);
  check(s0, "s0", {S, B, NH, DH}, st, dev);
  check(h, "h", {T, B, NH, DH}, st, dev);
  check(sT, "sT", {S, B, NH, DH}, st, dev);
  const bool save = states_in.dim() == 5;  // save=false passes 1-d empty tensors
  if (save) {
    check(states_in, "states_in", {T, S, B, NH, DH}, at::kFloat, dev);
    check(rhb, "rhb", {T, B, NH, G, DH}, at::kFloat, dev);
  } else {
    TORCH_CHECK(states_in.numel() == 0 && rhb.numel() == 0,
                "flashrnn_alternating: states_in, rhb: expected both [T, S, B, NH, DH] / [T, B, NH, G, DH] "
                "(save) or both empty");
  }
  const int64_t KS = flashrnn::alternating::gemm_splits(dtype);
  const int64_t BG = step ? 0 : B;  // cuBLAS-path workspaces are empty on the step path
  auto f32 = gx.options().dtype(at::kFloat);
  at::Tensor state_ws = at::empty({S, B, NH, DH}, f32);             // [S, B, NH, DH]
  at::Tensor hsplit_ws = at::empty({KS * BG, NH, DH}, gx.options());  // [KS*B, NH, DH]
  at::Tensor rh_ws = at::empty({KS * BG, NH, G, DH}, f32);          // [KS*B, NH, G, DH]
  at::Tensor h2_ws = at::empty({step ? B : 0, NH, DH}, f32);        // [B, NH, DH]
  flashrnn::alternating::ForwardArgs args{
      shape_of(c), dtype, reverse,
      gx.data_ptr(), R.data_ptr(), b.data_ptr(), s0.data_ptr(), h.data_ptr(), sT.data_ptr(),
      save ? states_in.data_ptr<float>() : nullptr, save ? rhb.data_ptr<float>() : nullptr,
      state_ws.data_ptr<float>(), hsplit_ws.data_ptr(), rh_ws.data_ptr<float>(), step, h2_ws.data_ptr<float>()};
  const std::string err =
      flashrnn::alternating::forward(functor, args, c10::cuda::getCurrentCUDAStream(dev.index()).stream());
  TORCH_CHECK(err.empty(), "flashrnn_alternating.forward (", functor, "): ", err);
}

// dh [T, B, NH, DH], dsT [S, B, NH, DH], gx, R, states_in, rhb (as saved by forward) ->
// writes dgx [T, B, NH, G, DH], dR [NH, G, DH, DH], db [NH, G, DH], ds0 [S, B, NH, DH]
void backward(const at::Tensor& dh_, const at::Tensor& dsT_, const at::Tensor& gx_, const at::Tensor& R_,
              const at::Tensor& states_in_, const at::Tensor& rhb_, const std::string& functor,
              bool reverse, at::Tensor& dgx, at::Tensor& dR, at::Tensor& db, at::Tensor& ds0,
              int64_t step_kernel) {
  const Call c = describe(gx_, functor, step_kernel);
  const auto& [G, S, dev, dtype, st, T, B, NH, DH, step] = c;
  c10::cuda::CUDAGuard guard(dev);
  at::Tensor gx = gx_.contiguous(), R = R_.contiguous(), dh = dh_.contiguous(), dsT = dsT_.contiguous();
  at::Tensor states_in = states_in_.contiguous(), rhb = rhb_.contiguous();
  check(R, "R", {NH, G, DH, DH}, st, dev);
  check(dh, "dh", {T, B, NH, DH}, st, dev);
  check(dsT, "dsT", {S, B, NH, DH}, st, dev);
  check(states_in, "states_in", {T, S, B, NH, DH}, at::kFloat, dev, /*may_be_empty=*/T == 0);
  check(rhb, "rhb", {T, B, NH, G, DH}, at::kFloat, dev, /*may_be_empty=*/T == 0);
  check(dgx, "dgx", {T, B, NH, G, DH}, st, dev);
  check(dR, "dR", {NH, G, DH, DH}, st, dev);
  check(db, "db", {NH, G, DH}, st, dev);
  check(ds0, "ds0", {S, B, NH, DH}, st, dev);
  const int64_t KS = flashrnn::alternating::gemm_splits(dtype);
  const bool f64 = flashrnn::alternating::dR_dtype(dtype) == DType::kFloat64;
  auto f32 = gx.options().dtype(at::kFloat), f64o = gx.options().dtype(at::kDouble);
  auto dto = f64 ? f64o : gx.options();
  at::Tensor ds_ws = at::empty({S, B, NH, DH}, f32);                     // [S, B, NH, DH]
  at::Tensor db_ws = at::empty({B, NH, G, DH}, f64o);                    // [B, NH, G, DH]
  at::Tensor dsplit_ws = at::empty({step ? 0 : B, NH, KS, G, DH}, gx.options());  // [B, NH, KS, G, DH]
  at::Tensor R2_ws = at::empty({KS == 2 && !step ? NH : 0, KS, G, DH, DH}, gx.options());  // [NH, KS, G, DH, DH]
  at::Tensor RT_ws = at::empty({step ? NH : 0, DH, G, DH}, gx.options());  // [NH, DH, G, DH]
  at::Tensor dr_ws = at::empty({step ? 2 : 0, B, NH, G, DH}, f32);         // [2, B, NH, G, DH]
  at::Tensor drhb_ws = at::empty({T, B, NH, G, DH}, dto);                // [T, B, NH, G, DH]
  at::Tensor hin_ws = at::empty({T, B, NH, DH}, dto);                    // [T, B, NH, DH]
  at::Tensor dR64_ws = at::empty({f64 ? NH : 0, G, DH, DH}, f64o);       // [NH, G, DH, DH]
  flashrnn::alternating::BackwardArgs args{
      shape_of(c), dtype, reverse,
      dh.data_ptr(), dsT.data_ptr(), gx.data_ptr(), R.data_ptr(),
      T > 0 ? states_in.data_ptr<float>() : nullptr, T > 0 ? rhb.data_ptr<float>() : nullptr,
      dgx.data_ptr(), dR.data_ptr(), db.data_ptr(), ds0.data_ptr(),
      ds_ws.data_ptr<float>(), db_ws.data_ptr<double>(), dsplit_ws.data_ptr(), R2_ws.data_ptr(),
      drhb_ws.data_ptr(), hin_ws.data_ptr(), dR64_ws.data_ptr<double>(), step, RT_ws.data_ptr(),
      dr_ws.data_ptr<float>()};
  const std::string err =
      flashrnn::alternating::backward(functor, args, c10::cuda::getCurrentCUDAStream(dev.index()).stream());
  TORCH_CHECK(err.empty(), "flashrnn_alternating.backward (", functor, "): ", err);
}

}  // namespace

TORCH_LIBRARY(flashrnn_alternating, m) {
  m.def("forward(Tensor gx, Tensor R, Tensor b, Tensor s0, str functor, bool reverse, Tensor(a!) h, "
        "Tensor(b!) sT, Tensor(c!) states_in, Tensor(d!) rhb, int step_kernel=0) -> ()");
  m.def("backward(Tensor dh, Tensor dsT, Tensor gx, Tensor R, Tensor states_in, Tensor rhb, str functor, "
        "bool reverse, Tensor(a!) dgx, Tensor(b!) dR, Tensor(c!) db, Tensor(d!) ds0, int step_kernel=0) -> ()");
}

TORCH_LIBRARY_IMPL(flashrnn_alternating, CUDA, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
