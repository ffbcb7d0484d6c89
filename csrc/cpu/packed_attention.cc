// Causal attention over packed rows: each row holds several examples one after another
// (`seg` [b, s] int64: the example id of each position, equal ids forming contiguous runs),
// and position i attends to j only when j <= i inside its own run. Only those blocks are
// computed (work = sum of len^2 / 2 per row instead of s^2), the CPU counterpart of
// FlashMask's start/end row indices. q: [b, s, heads, d], k/v: [b, s, kv_heads, d] (grouped
// query attention when kv_heads < heads). Forward keeps the log-sum-exp of each query row
// [b, heads, s] for the backward, which recomputes the probabilities (no [s, s] matrix is
// stored). Threads split (batch, kv head) pairs, so the k/v gradients need no locks.
#include <algorithm>
#include <limits>

#include "common.h"

namespace {

struct Dims {
  int64_t b, s, h, hk, d;
};

Dims dims_of(const paddle::Tensor& q, const paddle::Tensor& k) {
  return {q.shape()[0], q.shape()[1], q.shape()[2], k.shape()[2], q.shape()[3]};
}

// Run boundaries of row r: starts[i] = first position of i's run.
void run_starts(const int64_t* seg, int64_t s, std::vector<int64_t>& start) {
  for (int64_t i = 0; i < s; ++i) start[i] = (i > 0 && seg[i] == seg[i - 1]) ? start[i - 1] : i;
}

// Copies head `hh` of row `bi` of a [b, s, heads, d] tensor into contiguous [s, d].
template <typename T>
void gather(const T* x, T* out, const Dims& m, int64_t heads, int64_t bi, int64_t hh) {
  for (int64_t i = 0; i < m.s; ++i) std::copy_n(x + ((bi * m.s + i) * heads + hh) * m.d, m.d, out + i * m.d);
}

template <typename T>
void forward(const T* q, const T* k, const T* v, const int64_t* seg, T* out, float* lse, const Dims& m, T scale) {
  const int64_t group = m.h / m.hk;
#pragma omp parallel if (m.b * m.s * m.h * m.d >= llmx::kParallelMin)
  {
    std::vector<T> kb(m.s * m.d), vb(m.s * m.d), p(m.s), acc(m.d);
    std::vector<int64_t> start(m.s);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < m.b; ++bi) {
      for (int64_t kh = 0; kh < m.hk; ++kh) {
        run_starts(seg + bi * m.s, m.s, start);
        gather(k, kb.data(), m, m.hk, bi, kh);
        gather(v, vb.data(), m, m.hk, bi, kh);
        for (int64_t hh = kh * group; hh < (kh + 1) * group; ++hh) {
          for (int64_t i = 0; i < m.s; ++i) {
            const T* qi = q + ((bi * m.s + i) * m.h + hh) * m.d;
            T mx = -std::numeric_limits<T>::infinity();
            for (int64_t j = start[i]; j <= i; ++j) {
              p[j] = llmx::dot(qi, kb.data() + j * m.d, m.d) * scale;
              mx = std::max(mx, p[j]);
            }
            T sum = 0;
            std::fill(acc.begin(), acc.end(), T(0));
            for (int64_t j = start[i]; j <= i; ++j) {
              const T e = llmx::vexp(p[j] - mx);
              sum += e;
              const T* vj = vb.data() + j * m.d;
#pragma omp simd
              for (int64_t c = 0; c < m.d; ++c) acc[c] += e * vj[c];
            }
            T* oi = out + ((bi * m.s + i) * m.h + hh) * m.d;
            const T inv = T(1) / sum;
#pragma omp simd
            for (int64_t c = 0; c < m.d; ++c) oi[c] = acc[c] * inv;
            lse[(bi * m.h + hh) * m.s + i] = float(mx + std::log(sum));
          }
        }
      }
    }
  }
}

// With P = softmax rows, D_i = dO_i . O_i:  dV_j += P_ij dO_i;  dS_ij = P_ij (dO_i . v_j - D_i);
// dQ_i += scale dS_ij k_j;  dK_j += scale dS_ij q_i.
template <typename T>
void backward(const T* q, const T* k, const T* v, const int64_t* seg, const T* out, const float* lse, const T* dout,
              T* dq, T* dk, T* dv, const Dims& m, T scale) {
  const int64_t group = m.h / m.hk;
#pragma omp parallel if (m.b * m.s * m.h * m.d >= llmx::kParallelMin)
  {
    std::vector<T> kb(m.s * m.d), vb(m.s * m.d), dkb(m.s * m.d), dvb(m.s * m.d);
    std::vector<int64_t> start(m.s);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < m.b; ++bi) {
      for (int64_t kh = 0; kh < m.hk; ++kh) {
        run_starts(seg + bi * m.s, m.s, start);
        gather(k, kb.data(), m, m.hk, bi, kh);
        gather(v, vb.data(), m, m.hk, bi, kh);
        std::fill(dkb.begin(), dkb.end(), T(0));
        std::fill(dvb.begin(), dvb.end(), T(0));
        for (int64_t hh = kh * group; hh < (kh + 1) * group; ++hh) {
          for (int64_t i = 0; i < m.s; ++i) {
            const int64_t off = ((bi * m.s + i) * m.h + hh) * m.d;
            const T* qi = q + off;
            const T* gi = dout + off;
            T* dqi = dq + off;
            const T l = T(lse[(bi * m.h + hh) * m.s + i]);
            const T di = llmx::dot(gi, out + off, m.d);
            std::fill(dqi, dqi + m.d, T(0));
            for (int64_t j = start[i]; j <= i; ++j) {
              const T* kj = kb.data() + j * m.d;
              const T pij = llmx::vexp(llmx::dot(qi, kj, m.d) * scale - l);
              const T ds = pij * (llmx::dot(gi, vb.data() + j * m.d, m.d) - di) * scale;
              T* dvj = dvb.data() + j * m.d;
              T* dkj = dkb.data() + j * m.d;
#pragma omp simd
              for (int64_t c = 0; c < m.d; ++c) {
                dvj[c] += pij * gi[c];
                dqi[c] += ds * kj[c];
                dkj[c] += ds * qi[c];
              }
            }
          }
        }
        for (int64_t j = 0; j < m.s; ++j) {
          const int64_t off = ((bi * m.s + j) * m.hk + kh) * m.d;
          std::copy_n(dkb.data() + j * m.d, m.d, dk + off);
          std::copy_n(dvb.data() + j * m.d, m.d, dv + off);
        }
      }
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> PackedAttnForward(const paddle::Tensor& q, const paddle::Tensor& k,
                                              const paddle::Tensor& v, const paddle::Tensor& seg, float scale) {
  llmx::check_cpu_float(q, "q");
  PD_CHECK(q.shape().size() == 4 && k.shape().size() == 4, "q, k, v must be [batch, seq, heads, head_dim]");
  PD_CHECK(k.shape() == v.shape(), "k and v must match");
  PD_CHECK(k.shape()[0] == q.shape()[0] && k.shape()[1] == q.shape()[1] && k.shape()[3] == q.shape()[3],
           "k must match q but for its head count");
  PD_CHECK(q.shape()[2] % k.shape()[2] == 0, "heads must be a multiple of kv heads");
  PD_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "q, k, v: one dtype");
  PD_CHECK(seg.dtype() == paddle::DataType::INT64 && seg.shape().size() == 2 && seg.shape()[0] == q.shape()[0] &&
               seg.shape()[1] == q.shape()[1],
           "seg must be int64 [batch, seq]");
  const Dims m = dims_of(q, k);
  auto out = llmx::new_like(q);
  auto lse = paddle::empty({m.b, m.h, m.s}, paddle::DataType::FLOAT32, q.place());
  PD_DISPATCH_FLOATING_TYPES(q.type(), "llmx_packed_attention", ([&] {
    forward<data_t>(q.data<data_t>(), k.data<data_t>(), v.data<data_t>(), seg.data<int64_t>(), out.data<data_t>(),
                    lse.data<float>(), m, data_t(scale));
  }));
  return {out, lse};
}

std::vector<paddle::Tensor> PackedAttnBackward(const paddle::Tensor& q, const paddle::Tensor& k,
                                               const paddle::Tensor& v, const paddle::Tensor& seg,
                                               const paddle::Tensor& out, const paddle::Tensor& lse,
                                               const paddle::Tensor& dout, float scale) {
  const Dims m = dims_of(q, k);
  auto dq = llmx::new_like(q);
  auto dk = llmx::new_like(k);
  auto dv = llmx::new_like(v);
  PD_DISPATCH_FLOATING_TYPES(q.type(), "llmx_packed_attention_grad", ([&] {
    backward<data_t>(q.data<data_t>(), k.data<data_t>(), v.data<data_t>(), seg.data<int64_t>(), out.data<data_t>(),
                     lse.data<float>(), dout.data<data_t>(), dq.data<data_t>(), dk.data<data_t>(), dv.data<data_t>(), m,
                     data_t(scale));
  }));
  return {dq, dk, dv};
}

std::vector<std::vector<int64_t>> PackedAttnShape(const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                                                  const std::vector<int64_t>& v, const std::vector<int64_t>& seg) {
  return {q, {q[0], q[2], q[1]}};
}
std::vector<paddle::DataType> PackedAttnDtype(const paddle::DataType& q, const paddle::DataType& k,
                                              const paddle::DataType& v, const paddle::DataType& seg) {
  return {q, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(llmx_packed_attention)
    .Inputs({"Q", "K", "V", "Seg"})
    .Outputs({"Out", "Lse"})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(PackedAttnForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PackedAttnShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PackedAttnDtype));

PD_BUILD_GRAD_OP(llmx_packed_attention)
    .Inputs({"Q", "K", "V", "Seg", "Out", "Lse", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Q"), paddle::Grad("K"), paddle::Grad("V")})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(PackedAttnBackward));
