// SwiGLU: out = silu(gate) * up, silu(g) = g * sigmoid(g), elementwise.
#include "common.h"
#ifdef LLMX_WITH_CUDA
#include "../gpu/kernels.h"
#endif

std::vector<paddle::Tensor> SwigluForward(const paddle::Tensor& gate, const paddle::Tensor& up) {
#ifdef LLMX_WITH_CUDA
  if (gate.is_gpu()) {  // float32 only (llmx.ops sends other dtypes to the composed ops)
    auto out = llmx::new_like(gate);
    llmx_cuda::swiglu_forward(gate.data<float>(), up.data<float>(), out.data<float>(), gate.numel(), gate.stream());
    return {out};
  }
#endif
  llmx::check_cpu_float(gate, "gate");
  PD_CHECK(up.shape() == gate.shape() && up.dtype() == gate.dtype(), "up must match gate");
  auto out = llmx::new_like(gate);
  PD_DISPATCH_FLOATING_TYPES(gate.type(), "llmx_swiglu", ([&] {
    const data_t* g = gate.data<data_t>();
    const data_t* u = up.data<data_t>();
    data_t* o = out.data<data_t>();
    const int64_t n = gate.numel();
_Pragma("omp parallel for simd schedule(static) if (parallel : n >= llmx::kParallelMin)")
    for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (data_t(1) + llmx::vexp(-g[i])) * u[i];
  }));
  return {out};
}

// d gate = dout * up * s * (1 + g * (1 - s)),  d up = dout * g * s,  s = sigmoid(g).
std::vector<paddle::Tensor> SwigluBackward(const paddle::Tensor& gate, const paddle::Tensor& up,
                                           const paddle::Tensor& dout) {
  auto dg = llmx::new_like(gate);
  auto du = llmx::new_like(gate);
#ifdef LLMX_WITH_CUDA
  if (gate.is_gpu()) {
    llmx_cuda::swiglu_backward(gate.data<float>(), up.data<float>(), dout.data<float>(), dg.data<float>(),
                               du.data<float>(), gate.numel(), gate.stream());
    return {dg, du};
  }
#endif
  PD_DISPATCH_FLOATING_TYPES(gate.type(), "llmx_swiglu_grad", ([&] {
    const data_t* g = gate.data<data_t>();
    const data_t* u = up.data<data_t>();
    const data_t* d = dout.data<data_t>();
    data_t* pg = dg.data<data_t>();
    data_t* pu = du.data<data_t>();
    const int64_t n = gate.numel();
_Pragma("omp parallel for simd schedule(static) if (parallel : n >= llmx::kParallelMin)")
    for (int64_t i = 0; i < n; ++i) {
      const data_t s = data_t(1) / (data_t(1) + llmx::vexp(-g[i]));
      pg[i] = d[i] * u[i] * s * (data_t(1) + g[i] * (data_t(1) - s));
      pu[i] = d[i] * g[i] * s;
    }
  }));
  return {dg, du};
}

std::vector<std::vector<int64_t>> SwigluShape(const std::vector<int64_t>& g, const std::vector<int64_t>& u) {
  return {g};
}
std::vector<paddle::DataType> SwigluDtype(const paddle::DataType& g, const paddle::DataType& u) { return {g}; }

PD_BUILD_OP(llmx_swiglu)
    .Inputs({"Gate", "Up"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SwigluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SwigluShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SwigluDtype));

PD_BUILD_GRAD_OP(llmx_swiglu)
    .Inputs({"Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Gate"), paddle::Grad("Up")})
    .SetKernelFn(PD_KERNEL(SwigluBackward));
