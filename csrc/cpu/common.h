// Shared helpers of llmx's CPU kernels (written for llmx; built by llmx/ops/build.py).
// Vectorisation: the inner loops carry `#pragma omp simd` and the build passes -march=native,
// so the compiler emits AVX2/AVX-512 where the CPU has it and scalar code elsewhere (the build
// cache key includes the CPU flags). OpenMP spreads rows across cores.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <sys/mman.h>

#include "paddle/extension.h"

namespace llmx {

// Product of all dims but the last: the rows a last-axis op walks.
inline int64_t rows_of(const paddle::Tensor& x) {
  return x.numel() / x.shape().back();
}

inline void check_cpu_float(const paddle::Tensor& x, const char* name) {
  PD_CHECK(x.is_cpu(), name, " must be a CPU tensor");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 || x.dtype() == paddle::DataType::FLOAT64,
           name, " must be float32 or float64");
}

// Work (elements) below which a kernel stays on the calling thread (an `if` on each parallel region):
// waking an OpenMP team costs microseconds on idle cores but milliseconds on shared ones, where a
// descheduled team member holds up the region's closing barrier (a tiny model's 2-step SFT run spent
// 3.7 s in 767 small kernel calls on 2 busy cores; with the composed ops the whole run took 8 s). 64k float32 elements (256 KiB)
// take ~30 us on one core; a 135M model's layer input (1024 tokens x 576) is 9x that.
constexpr int64_t kParallelMin = int64_t(1) << 16;

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// exp() that the compiler can vectorise inside `omp simd` loops (glibc's vector expf is only
// declared under -ffast-math, whose finite-math assumptions the masking here cannot take):
// Cody-Waite range reduction x = n ln2 + r, a degree-6 polynomial for e^r (Cephes' expf
// coefficients), 2^n put into the exponent bits. Within ~2 ulp of std::exp for float; inputs
// are clamped to [-87.3, 88.3] (e^-87.3 ~ 1e-38 stands for 0). Doubles use std::exp.
inline float vexp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // floor(x log2(e) + 0.5) by truncation of a positive number (converts without a branch)
  const int32_t ni = static_cast<int32_t>(x * 1.44269504088896341f + 128.5f) - 128;
  const float n = static_cast<float>(ni);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double vexp(double x) { return std::exp(x); }

// A new output tensor's pages are first touched by the kernel that fills it; on a VM each 4 KiB
// page fault costs about as much as the arithmetic of an elementwise op (a 23 MB output: ~12 ms of
// a ~15 ms op, measured here). Asking for transparent huge pages on the 2 MiB-aligned interior
// (the kernel's default THP mode is often `madvise`) makes those 512x fewer faults. Advice only:
// memory Paddle's allocator hands back again is already mapped, and failure changes nothing.
inline void prefer_huge_pages(const paddle::Tensor& t) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto start = reinterpret_cast<uintptr_t>(t.data());
  const uintptr_t first = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (start + t.numel() * phi::SizeOf(t.dtype())) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

// A new tensor shaped like `like` (CPU: its pages advised huge, above).
inline paddle::Tensor new_like(const paddle::Tensor& like) {
  auto t = paddle::empty(like.shape(), like.dtype(), like.place());
  if (t.is_cpu()) prefer_huge_pages(t);
  return t;
}

}  // namespace llmx
