// CUDA launchers of llmx's GPU kernels (csrc/gpu/kernels.cu), called from the CPU ops' entry
// functions when a tensor lives on the GPU. Compiled only where nvcc and a CUDA build of Paddle
// are both present (LLMX_WITH_CUDA); UNTESTED: the machines llmx is developed on have no GPU.
#pragma once
#include <cstdint>

namespace llmx_cuda {
void rms_norm_forward(const float* x, const float* w, float* y, int64_t rows, int64_t h, float eps, void* stream);
void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows, int64_t h,
                       float eps, void* stream);  // dw must be zeroed: rows add into it
void swiglu_forward(const float* g, const float* u, float* o, int64_t n, void* stream);
void swiglu_backward(const float* g, const float* u, const float* d, float* dg, float* du, int64_t n, void* stream);
}  // namespace llmx_cuda
