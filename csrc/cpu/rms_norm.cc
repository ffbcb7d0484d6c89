// Fused RMSNorm: y = w * x / sqrt(mean(x^2) + eps) over the last axis, optionally after a
// residual add (h = x + residual, y = norm(h); both returned). One pass per row forward;
// the backward recomputes the row's 1/rms instead of storing it.
#include "common.h"
#ifdef LLMX_WITH_CUDA
#include "../gpu/kernels.h"
#endif

namespace {

// With `residual` (may be null) x + residual is written to `sum` first, row by row, and normalised
// while the row is still in cache.
template <typename T>
void norm_rows(const T* x, const T* residual, T* sum, const T* w, T* y, int64_t rows, int64_t h, float eps) {
#pragma omp parallel for schedule(static) if (rows * h >= llmx::kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * h;
    if (residual != nullptr) {
      const T* rr = residual + r * h;
      T* sr = sum + r * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) sr[i] = xr[i] + rr[i];
      xr = sr;
    }
    T* yr = y + r * h;
    T rstd = T(1) / std::sqrt(llmx::dot(xr, xr, h) / T(h) + T(eps));
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) yr[i] = w[i] * (xr[i] * rstd);
  }
}

// dx = rstd * w*dy - x * rstd^3 / h * sum(w*dy*x);  dw = sum over rows of dy * x * rstd.
// `dx_add` (may be null) is added to dx: the gradient reaching h directly (residual variant).
template <typename T>
void norm_rows_grad(const T* x, const T* w, const T* dy, const T* dx_add, T* dx, T* dw, int64_t rows, int64_t h,
                    float eps) {
  std::vector<T> acc_all;
#pragma omp parallel if (rows * h >= llmx::kParallelMin)
  {
    std::vector<T> acc(h, T(0));  // this thread's share of dw
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * h;
      const T* gr = dy + r * h;
      T* dxr = dx + r * h;
      T rstd = T(1) / std::sqrt(llmx::dot(xr, xr, h) / T(h) + T(eps));
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < h; ++i) s += w[i] * gr[i] * xr[i];
      T c = s * rstd * rstd * rstd / T(h);
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) {
        dxr[i] = rstd * w[i] * gr[i] - xr[i] * c;
        acc[i] += gr[i] * xr[i] * rstd;
      }
      if (dx_add != nullptr) {
        const T* ar = dx_add + r * h;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) dxr[i] += ar[i];
      }
    }
#pragma omp critical
    {
      for (int64_t i = 0; i < h; ++i) dw[i] += acc[i];
    }
  }
}

void check(const paddle::Tensor& x, const paddle::Tensor& w) {
  llmx::check_cpu_float(x, "x");
  PD_CHECK(w.dtype() == x.dtype(), "weight and x must have one dtype");
  PD_CHECK(w.numel() == x.shape().back(), "weight must have x's last dim (", x.shape().back(), ") elements");
}

}  // namespace

std::vector<paddle::Tensor> RmsNormForward(const paddle::Tensor& x, const paddle::Tensor& w, float eps) {
#ifdef LLMX_WITH_CUDA
  if (x.is_gpu()) {  // float32 only (llmx.ops sends other dtypes to the composed ops)
    auto y = llmx::new_like(x);
    llmx_cuda::rms_norm_forward(x.data<float>(), w.data<float>(), y.data<float>(), llmx::rows_of(x), x.shape().back(),
                                eps, x.stream());
    return {y};
  }
#endif
  check(x, w);
  auto y = llmx::new_like(x);
  PD_DISPATCH_FLOATING_TYPES(x.type(), "llmx_rms_norm", ([&] {
    norm_rows<data_t>(x.data<data_t>(), nullptr, nullptr, w.data<data_t>(), y.data<data_t>(), llmx::rows_of(x),
                      x.shape().back(), eps);
  }));
  return {y};
}

std::vector<paddle::Tensor> RmsNormBackward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& dy,
                                            float eps) {
  auto dx = llmx::new_like(x);
  auto dw = paddle::full(w.shape(), 0, w.dtype(), w.place());
#ifdef LLMX_WITH_CUDA
  if (x.is_gpu()) {
    llmx_cuda::rms_norm_backward(x.data<float>(), w.data<float>(), dy.data<float>(), dx.data<float>(), dw.data<float>(),
                                 llmx::rows_of(x), x.shape().back(), eps, x.stream());
    return {dx, dw};
  }
#endif
  PD_DISPATCH_FLOATING_TYPES(x.type(), "llmx_rms_norm_grad", ([&] {
    norm_rows_grad<data_t>(x.data<data_t>(), w.data<data_t>(), dy.data<data_t>(), nullptr, dx.data<data_t>(),
                           dw.data<data_t>(), llmx::rows_of(x), x.shape().back(), eps);
  }));
  return {dx, dw};
}

std::vector<paddle::Tensor> AddRmsNormForward(const paddle::Tensor& x, const paddle::Tensor& residual,
                                              const paddle::Tensor& w, float eps) {
  check(x, w);
  PD_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype(), "residual must match x");
  auto y = llmx::new_like(x);
  auto h = llmx::new_like(x);
  PD_DISPATCH_FLOATING_TYPES(x.type(), "llmx_add_rms_norm", ([&] {
    norm_rows<data_t>(x.data<data_t>(), residual.data<data_t>(), h.data<data_t>(), w.data<data_t>(), y.data<data_t>(),
                      llmx::rows_of(x), x.shape().back(), eps);
  }));
  return {y, h};
}

std::vector<paddle::Tensor> AddRmsNormBackward(const paddle::Tensor& h, const paddle::Tensor& w,
                                               const paddle::Tensor& dy, const paddle::Tensor& dh, float eps) {
  auto dx = llmx::new_like(h);
  auto dw = paddle::full(w.shape(), 0, w.dtype(), w.place());
  PD_DISPATCH_FLOATING_TYPES(h.type(), "llmx_add_rms_norm_grad", ([&] {
    const data_t* add = dh.initialized() ? dh.data<data_t>() : nullptr;
    norm_rows_grad<data_t>(h.data<data_t>(), w.data<data_t>(), dy.data<data_t>(), add, dx.data<data_t>(),
                           dw.data<data_t>(), llmx::rows_of(h), h.shape().back(), eps);
  }));
  return {dx, dx, dw};  // x and residual receive the same gradient
}

std::vector<std::vector<int64_t>> SameAsFirst(const std::vector<int64_t>& x, const std::vector<int64_t>& w) {
  return {x};
}
std::vector<paddle::DataType> DtypeAsFirst(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }
std::vector<std::vector<int64_t>> AddShape(const std::vector<int64_t>& x, const std::vector<int64_t>& r,
                                           const std::vector<int64_t>& w) {
  return {x, x};
}
std::vector<paddle::DataType> AddDtype(const paddle::DataType& x, const paddle::DataType& r,
                                       const paddle::DataType& w) {
  return {x, x};
}

PD_BUILD_OP(llmx_rms_norm)
    .Inputs({"X", "W"})
    .Outputs({"Y"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SameAsFirst))
    .SetInferDtypeFn(PD_INFER_DTYPE(DtypeAsFirst));

PD_BUILD_GRAD_OP(llmx_rms_norm)
    .Inputs({"X", "W", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNormBackward));

PD_BUILD_OP(llmx_add_rms_norm)
    .Inputs({"X", "Residual", "W"})
    .Outputs({"Y", "H"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(AddRmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(AddShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AddDtype));

PD_BUILD_GRAD_OP(llmx_add_rms_norm)
    .Inputs({"H", "W", paddle::Grad("Y"), paddle::Grad("H")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Residual"), paddle::Grad("W")})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(AddRmsNormBackward));
