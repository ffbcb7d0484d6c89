// Shared helpers of llmx's CPU kernels (written for llmx; built by llmx/ops/build.py).
// Vectorisation: the inner loops carry `#pragma omp simd` and the build passes -march=native,
// so the compiler emits AVX2/AVX-512 where the CPU has it and scalar code elsewhere (the build
// cache key includes the CPU flags). OpenMP spreads rows across cores.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

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

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace llmx
