// ARM (LCAR eqs. 7-9) on the CPU: float32 buffers, OpenMP over rows (one image) or images.
#pragma once

#include <cstdint>

#include "arm_common.h"

namespace lcar {

// OpenMP threads a call with num_threads <= 0 uses (1 without OpenMP).
int openmp_max_threads();

// Eqs. 7-8: images (B, 3, H, W) RGB -> aff (B, |N|, H, W).
void affinities_cpu(const float* images, float* aff, int64_t B, int H, int W,
                    const ArmParams& params, int num_threads);

// Eq. 9 applied params.iterations times to e_h (B, H, W) with aff (B, |N|, H, W) -> out (B, H, W),
// not normalised.
void propagate_cpu(const float* e_h, const float* aff, float* out, int64_t B, int H, int W,
                   const ArmParams& params, int num_threads);

// Eqs. 7-9 and the final per-image min-max (a constant map becomes 0): e_h (B, H, W) in
// [-0.5, 0.5], images (B, 3, H, W) -> out (B, H, W) in [0, 1]. With at least as many images as
// threads, each thread refines whole images (no synchronisation per iteration); otherwise the
// rows of one image are shared.
void refine_cpu(const float* e_h, const float* images, float* out, int64_t B, int H, int W,
                const ArmParams& params, int num_threads);

}  // namespace lcar
