// GPU versions of RMSNorm and SwiGLU (float32), the same math as csrc/cpu. One block per row for
// RMSNorm (a shared-memory sum of squares), a grid-stride loop for SwiGLU. UNTESTED (no GPU here).
#include <cuda_runtime.h>

#include "kernels.h"

namespace {
constexpr int kThreads = 256;

__device__ float block_sum(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  float total = shared[0];
  __syncthreads();
  return total;
}

__global__ void rms_fwd(const float* x, const float* w, float* y, int64_t h, float eps) {
  __shared__ float shared[kThreads];
  const float* xr = x + blockIdx.x * h;
  float* yr = y + blockIdx.x * h;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
  const float rstd = rsqrtf(block_sum(ss, shared) / h + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) yr[i] = w[i] * (xr[i] * rstd);
}

__global__ void rms_bwd(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t h, float eps) {
  __shared__ float shared[kThreads];
  const float* xr = x + blockIdx.x * h;
  const float* gr = dy + blockIdx.x * h;
  float* dxr = dx + blockIdx.x * h;
  float ss = 0.f, s = 0.f;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
  const float rstd = rsqrtf(block_sum(ss, shared) / h + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) s += w[i] * gr[i] * xr[i];
  const float c = block_sum(s, shared) * rstd * rstd * rstd / h;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
    dxr[i] = rstd * w[i] * gr[i] - xr[i] * c;
    atomicAdd(dw + i, gr[i] * xr[i] * rstd);
  }
}

__global__ void swiglu_fwd(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    o[i] = g[i] / (1.f + __expf(-g[i])) * u[i];
}

__global__ void swiglu_bwd(const float* g, const float* u, const float* d, float* dg, float* du, int64_t n) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float s = 1.f / (1.f + __expf(-g[i]));
    dg[i] = d[i] * u[i] * s * (1.f + g[i] * (1.f - s));
    du[i] = d[i] * g[i] * s;
  }
}

int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads < 65535 ? (n + kThreads - 1) / kThreads : 65535); }
}  // namespace

namespace llmx_cuda {
void rms_norm_forward(const float* x, const float* w, float* y, int64_t rows, int64_t h, float eps, void* stream) {
  rms_fwd<<<rows, kThreads, 0, (cudaStream_t)stream>>>(x, w, y, h, eps);
}
void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows, int64_t h,
                       float eps, void* stream) {
  rms_bwd<<<rows, kThreads, 0, (cudaStream_t)stream>>>(x, w, dy, dx, dw, h, eps);
}
void swiglu_forward(const float* g, const float* u, float* o, int64_t n, void* stream) {
  swiglu_fwd<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(g, u, o, n);
}
void swiglu_backward(const float* g, const float* u, const float* d, float* dg, float* du, int64_t n, void* stream) {
  swiglu_bwd<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(g, u, d, dg, du, n);
}
}  // namespace llmx_cuda
