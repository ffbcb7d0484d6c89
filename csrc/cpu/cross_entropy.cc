// The per-chunk core of the fused linear + cross-entropy (llmx/ops/cross_entropy.py does the
// chunking and the matmuls, which BLAS does best): from one chunk's logits [n, vocab] and labels
// [n], in one pass per row, the loss of each row (logsumexp - logit[label]) and the gradient of
// the summed loss w.r.t. the logits (softmax - onehot). Rows whose label is `ignore_index` get
// loss 0 and gradient 0. No autograd: the caller's PyLayer owns the backward.
#include <limits>

#include "common.h"

std::vector<paddle::Tensor> SoftmaxCeForward(const paddle::Tensor& logits, const paddle::Tensor& labels,
                                             int64_t ignore_index) {
  llmx::check_cpu_float(logits, "logits");
  PD_CHECK(logits.shape().size() == 2, "logits must be [tokens, vocab]");
  PD_CHECK(labels.dtype() == paddle::DataType::INT64 && labels.numel() == logits.shape()[0],
           "labels must be int64 [tokens]");
  const int64_t n = logits.shape()[0], v = logits.shape()[1];
  auto loss = paddle::empty({n}, logits.dtype(), logits.place());
  auto grad = paddle::empty(logits.shape(), logits.dtype(), logits.place());
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "llmx_softmax_ce", ([&] {
    const data_t* x = logits.data<data_t>();
    const int64_t* y = labels.data<int64_t>();
    data_t* l = loss.data<data_t>();
    data_t* g = grad.data<data_t>();
    for (int64_t r = 0; r < n; ++r)  // checked here: an exception must not leave an OpenMP region
      PD_CHECK(y[r] == ignore_index || (y[r] >= 0 && y[r] < v), "label ", y[r], " outside the vocabulary [0, ", v, ")");
_Pragma("omp parallel for schedule(static)")
    for (int64_t r = 0; r < n; ++r) {
      const data_t* xr = x + r * v;
      data_t* gr = g + r * v;
      if (y[r] == ignore_index) {
        l[r] = 0;
        for (int64_t i = 0; i < v; ++i) gr[i] = 0;
        continue;
      }
      data_t m = -std::numeric_limits<data_t>::infinity();
_Pragma("omp simd reduction(max : m)")
      for (int64_t i = 0; i < v; ++i) m = xr[i] > m ? xr[i] : m;
      data_t s = 0;
_Pragma("omp simd reduction(+ : s)")
      for (int64_t i = 0; i < v; ++i) {
        gr[i] = std::exp(xr[i] - m);
        s += gr[i];
      }
      const data_t inv = data_t(1) / s;
_Pragma("omp simd")
      for (int64_t i = 0; i < v; ++i) gr[i] *= inv;
      gr[y[r]] -= data_t(1);
      l[r] = m + std::log(s) - xr[y[r]];
    }
  }));
  return {loss, grad};
}

std::vector<std::vector<int64_t>> SoftmaxCeShape(const std::vector<int64_t>& x, const std::vector<int64_t>& y) {
  return {{x[0]}, x};
}
std::vector<paddle::DataType> SoftmaxCeDtype(const paddle::DataType& x, const paddle::DataType& y) { return {x, x}; }

PD_BUILD_OP(llmx_softmax_ce)
    .Inputs({"Logits", "Labels"})
    .Outputs({"Loss", "Grad"})
    .Attrs({"ignore_index: int64_t"})
    .SetKernelFn(PD_KERNEL(SoftmaxCeForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SoftmaxCeShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SoftmaxCeDtype));
