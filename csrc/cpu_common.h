// What the CPU kernels share: their OpenMP thread count, and the SIMD clones of hot row kernels.
#pragma once

#ifdef LCAR_HAVE_OPENMP
#include <omp.h>
#endif

// A row kernel marked LCAR_SIMD_CLONES is compiled for AVX-512, AVX2 and baseline x86-64 and the
// loader picks the one the CPU runs (GCC function multi-versioning; the rest stays baseline).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LCAR_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LCAR_SIMD_CLONES
#endif

namespace lcar {

// OpenMP threads for a kernel's num_threads: itself when > 0, else all available (1 without
// OpenMP).
inline int resolve_threads(int num_threads) {
#ifdef LCAR_HAVE_OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  return num_threads > 0 ? num_threads : 1;
#endif
}

}  // namespace lcar
