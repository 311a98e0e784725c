// ARM (LCAR eqs. 7-9) on CUDA GPUs: float32 device buffers given as raw pointers (allocated by
// the caller, e.g. torch), work queued on the caller's stream, nothing synchronised.
#pragma once

#include <cstdint>

#include "arm_common.h"

namespace lcar {

// CUDA devices visible (0 without a GPU or driver).
int cuda_device_count();

// Eqs. 7-8: images (B, 3, H, W) -> aff (B, |N|, H, W), all on device `device`.
void affinities_cuda(const float* images, float* aff, int64_t B, int H, int W,
                     const ArmParams& params, int device, std::uintptr_t stream);

// Eqs. 7-9 and the final per-image min-max: e_h (B, H, W), images (B, 3, H, W) -> out (B, H, W)
// in [0, 1]; aff (B, |N|, H, W) and work (B, H, W) are scratch buffers.
void refine_cuda(const float* e_h, const float* images, float* aff, float* work, float* out,
                 int64_t B, int H, int W, const ArmParams& params, int device,
                 std::uintptr_t stream);

}  // namespace lcar
