// ARM (LCAR eqs. 7-9) on the CPU: float32 buffers, OpenMP over rows.
#pragma once

#include <cstdint>

#include "arm_common.h"

namespace lcar {

// OpenMP threads a call with num_threads <= 0 uses (1 without OpenMP).
int openmp_max_threads();

// Eqs. 7-8: images (B, 3, H, W) RGB -> aff (B, |N|, H, W).
void affinities_cpu(const float* images, float* aff, int64_t B, int H, int W,
                    const NeighbourTable& table, const ArmParams& params, int num_threads);

// Eq. 9 applied params.iterations times to e_h (B, H, W) with aff (B, |N|, H, W) -> out (B, H, W).
void propagate_cpu(const float* e_h, const float* aff, float* out, int64_t B, int H, int W,
                   const NeighbourTable& table, const ArmParams& params, int num_threads);

// Per-image min-max of x (B, H, W) to [0, 1] in place; a constant image becomes 0.
void minmax_cpu(float* x, int64_t B, int64_t plane);

// Eqs. 7-9 and the final min-max: e_h (B, H, W) in [-0.5, 0.5], images (B, 3, H, W)
// -> out (B, H, W) in [0, 1]. Affinities are computed for one image at a time.
void refine_cpu(const float* e_h, const float* images, float* out, int64_t B, int H, int W,
                const ArmParams& params, int num_threads);

}  // namespace lcar
