// Rotary position embedding ("rotate half" form, as Llama/Qwen/Mistral/Gemma use it) on q and k
// in one op: out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] over the head dim.
// q: [b, s, heads, d], k: [b, s, kv_heads, d], cos/sin: [1 or b, s, d] (already gathered by
// position ids). cos/sin take no gradient (they are buffers).
#include "common.h"

namespace {

// sign = +1: forward rotation; sign = -1: its transpose (the backward).
template <typename T>
void rotate(const T* x, const T* cos, const T* sin, T* out, int64_t b, int64_t s, int64_t heads, int64_t d,
            int64_t cos_b, T sign) {
  const int64_t half = d / 2;
#pragma omp parallel for collapse(2) schedule(static) if (b * s * heads * d >= llmx::kParallelMin)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t si = 0; si < s; ++si) {
      const int64_t crow = ((cos_b == 1 ? 0 : bi) * s + si) * d;
      const T* c = cos + crow;
      const T* sn = sin + crow;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t off = ((bi * s + si) * heads + h) * d;
        const T* xr = x + off;
        T* o = out + off;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          // forward: o1 = x1 c1 - x2 s1, o2 = x2 c2 + x1 s2
          // transpose: o1 = x1 c1 + x2 s2, o2 = x2 c2 - x1 s1
          // both halves read before either is written: out may be x (the in-place forward)
          const T s_first = sign > 0 ? sn[i] : sn[i + half];
          const T s_second = sign > 0 ? sn[i + half] : sn[i];
          const T x1 = xr[i], x2 = xr[i + half];
          o[i] = x1 * c[i] - sign * x2 * s_first;
          o[i + half] = x2 * c[i + half] + sign * x1 * s_second;
        }
      }
    }
  }
}

// Rotates x into out (which may be x itself).
template <typename T>
void apply(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin, T sign, paddle::Tensor& out) {
  const auto& sh = x.shape();
  rotate<T>(x.data<T>(), cos.data<T>(), sin.data<T>(), out.data<T>(), sh[0], sh[1], sh[2], sh[3], cos.shape()[0], sign);
}

void check(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& cos, const paddle::Tensor& sin) {
  llmx::check_cpu_float(q, "q");
  PD_CHECK(q.shape().size() == 4 && k.shape().size() == 4, "q and k must be [batch, seq, heads, head_dim]");
  PD_CHECK(q.shape()[3] % 2 == 0, "head_dim must be even");
  PD_CHECK(k.shape()[0] == q.shape()[0] && k.shape()[1] == q.shape()[1] && k.shape()[3] == q.shape()[3],
           "k must match q but for its head count");
  PD_CHECK(cos.shape().size() == 3 && cos.shape()[1] == q.shape()[1] && cos.shape()[2] == q.shape()[3],
           "cos/sin must be [1 or batch, seq, head_dim]");
  PD_CHECK(cos.shape()[0] == 1 || cos.shape()[0] == q.shape()[0], "cos/sin batch must be 1 or q's");
  PD_CHECK(sin.shape() == cos.shape(), "sin must match cos");
  PD_CHECK(k.dtype() == q.dtype() && cos.dtype() == q.dtype() && sin.dtype() == q.dtype(), "q, k, cos, sin: one dtype");
}

}  // namespace

// Forward in place: q and k are overwritten by their rotation (the model never reads the
// unrotated ones again, and the backward needs only cos/sin), so no second q/k is allocated.
void RopeInplace(paddle::Tensor& q, paddle::Tensor& k, const paddle::Tensor& cos, const paddle::Tensor& sin) {
  check(q, k, cos, sin);
  PD_DISPATCH_FLOATING_TYPES(q.type(), "llmx_rope", ([&] {
    apply<data_t>(q, cos, sin, data_t(1), q);
    apply<data_t>(k, cos, sin, data_t(1), k);
  }));
}

// A rotated output that took no gradient (only q or only k used) arrives uninitialised: its input
// gets zeros, shaped like the output (which is why the outputs, not only cos/sin, come back here).
std::vector<paddle::Tensor> RopeBackward(const paddle::Tensor& q_out, const paddle::Tensor& k_out,
                                         const paddle::Tensor& cos, const paddle::Tensor& sin,
                                         const paddle::Tensor& dq, const paddle::Tensor& dk) {
  std::vector<paddle::Tensor> out;
  for (auto [d, like] : {std::pair{&dq, &q_out}, std::pair{&dk, &k_out}}) {
    if (!d->initialized()) {
      out.push_back(paddle::full(like->shape(), 0, like->dtype(), like->place()));
      continue;
    }
    auto g = llmx::new_like(*d);
    PD_DISPATCH_FLOATING_TYPES(d->type(), "llmx_rope_grad", ([&] { apply<data_t>(*d, cos, sin, data_t(-1), g); }));
    out.push_back(g);
  }
  return out;
}

PD_BUILD_OP(llmx_rope)
    .Inputs({"Q", "K", "Cos", "Sin"})
    .Outputs({"QOut", "KOut"})
    .SetInplaceMap({{"Q", "QOut"}, {"K", "KOut"}})
    .SetKernelFn(PD_KERNEL(RopeInplace));

PD_BUILD_GRAD_OP(llmx_rope)
    .Inputs({"QOut", "KOut", "Cos", "Sin", paddle::Grad("QOut"), paddle::Grad("KOut")})
    .Outputs({paddle::Grad("Q"), paddle::Grad("K")})
    .SetKernelFn(PD_KERNEL(RopeBackward));
