// The per-chunk core of the fused linear + cross-entropy (llmx.ops.fused_linear_cross_entropy does the
// chunking and the matmuls, which BLAS does best): from one chunk's logits [n, vocab] and labels
// [n], the loss of each row (logsumexp - logit[label]) and, written over the logits, the gradient
// of the summed loss w.r.t. them (softmax - onehot). Rows whose label is `ignore_index` get loss 0
// and gradient 0. No autograd: the caller's PyLayer owns the backward.
#include <limits>

#include "common.h"

void SoftmaxCeInplace(paddle::Tensor& logits, const paddle::Tensor& labels, paddle::Tensor& loss,
                      int64_t ignore_index) {
  llmx::check_cpu_float(logits, "logits");
  PD_CHECK(logits.shape().size() == 2, "logits must be [tokens, vocab]");
  const int64_t n = logits.shape()[0], v = logits.shape()[1];
  PD_CHECK(labels.dtype() == paddle::DataType::INT64 && labels.numel() == n, "labels must be int64 [tokens]");
  PD_CHECK(loss.dtype() == logits.dtype() && loss.numel() == n, "loss must be [tokens] of the logits' dtype");
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "llmx_softmax_ce", ([&] {
    data_t* x = logits.data<data_t>();
    const int64_t* y = labels.data<int64_t>();
    data_t* l = loss.data<data_t>();
    for (int64_t r = 0; r < n; ++r)  // checked here: an exception must not leave an OpenMP region
      PD_CHECK(y[r] == ignore_index || (y[r] >= 0 && y[r] < v), "label ", y[r], " outside the vocabulary [0, ", v, ")");
_Pragma("omp parallel for schedule(static) if (n * v >= llmx::kParallelMin)")
    for (int64_t r = 0; r < n; ++r) {
      data_t* xr = x + r * v;
      if (y[r] == ignore_index) {
        l[r] = 0;
        std::memset(xr, 0, sizeof(data_t) * v);
        continue;
      }
      data_t m = -std::numeric_limits<data_t>::infinity();
_Pragma("omp simd reduction(max : m)")
      for (int64_t i = 0; i < v; ++i) m = xr[i] > m ? xr[i] : m;
      const data_t target = xr[y[r]];
      data_t s = 0;
_Pragma("omp simd reduction(+ : s)")
      for (int64_t i = 0; i < v; ++i) {
        xr[i] = llmx::vexp(xr[i] - m);
        s += xr[i];
      }
      const data_t inv = data_t(1) / s;
_Pragma("omp simd")
      for (int64_t i = 0; i < v; ++i) xr[i] *= inv;
      xr[y[r]] -= data_t(1);
      l[r] = m + std::log(s) - target;
    }
  }));
}

// In place: the logits become the gradient (no second [tokens, vocab] buffer), `loss` is filled.
PD_BUILD_OP(llmx_softmax_ce)
    .Inputs({"Logits", "Labels", "Loss"})
    .Outputs({"Grad", "LossOut"})
    .Attrs({"ignore_index: int64_t"})
    .SetInplaceMap({{"Logits", "Grad"}, {"Loss", "LossOut"}})
    .SetKernelFn(PD_KERNEL(SoftmaxCeInplace));

// C += A^T B for A [n, m], B [n, k], C [m, k], written into C (an in-place op): the fused
// cross-entropy accumulates its weight gradient chunk by chunk this way, where `C += matmul(...)`
// would allocate a second [hidden, vocab] tensor per chunk. The product is BLAS's (the MKL
// library Paddle's CPU wheel ships, libmklml_intel): a hand-written GEMM would be far slower.
extern "C" {
void cblas_sgemm(int layout, int transa, int transb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
void cblas_dgemm(int layout, int transa, int transb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc);
}

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
void gemm_tn(const float* a, const float* b, float* c, int n, int m, int k) {
  cblas_sgemm(kRowMajor, kTrans, kNoTrans, m, k, n, 1.f, a, m, b, k, 1.f, c, k);
}
void gemm_tn(const double* a, const double* b, double* c, int n, int m, int k) {
  cblas_dgemm(kRowMajor, kTrans, kNoTrans, m, k, n, 1.0, a, m, b, k, 1.0, c, k);
}
}  // namespace

void GemmTnAcc(paddle::Tensor& c, const paddle::Tensor& a, const paddle::Tensor& b) {
  llmx::check_cpu_float(a, "a");
  PD_CHECK(a.shape().size() == 2 && b.shape().size() == 2 && c.shape().size() == 2, "gemm_tn_acc: 2-D tensors");
  PD_CHECK(a.shape()[0] == b.shape()[0] && c.shape()[0] == a.shape()[1] && c.shape()[1] == b.shape()[1],
           "gemm_tn_acc: shapes do not chain");
  PD_CHECK(b.dtype() == a.dtype() && c.dtype() == a.dtype(), "gemm_tn_acc: one dtype");
  PD_DISPATCH_FLOATING_TYPES(a.type(), "llmx_gemm_tn_acc", ([&] {
    gemm_tn(a.data<data_t>(), b.data<data_t>(), c.data<data_t>(), int(a.shape()[0]), int(a.shape()[1]),
            int(b.shape()[1]));
  }));
}

PD_BUILD_OP(llmx_gemm_tn_acc)
    .Inputs({"C", "A", "B"})
    .Outputs({"COut"})
    .SetInplaceMap({{"C", "COut"}})
    .SetKernelFn(PD_KERNEL(GemmTnAcc));
