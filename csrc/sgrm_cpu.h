// SGRM's superpixels on the CPU: Felzenszwalb-Huttenlocher graph segmentation after the Gaussian
// smoothing, the algorithm of scikit-image's felzenszwalb step for step (the reference
// lcar_deploy.stages.sgrm.superpixels calls that; tests/test_sgrm.py holds the two equal).
#pragma once

#include <cstdint>

namespace lcar {

// Segments of a smoothed image (H, W, C) float64, C-contiguous: 8-connected grid graph with
// Euclidean colour distances, edges taken in increasing cost (a stable radix sort, so equal costs
// in grid order: right, down, down-right, up-right edges, each row-major), merged while the cost
// is under min(Int(C) + scale / 255 / |C|) of both components (float32, as scikit-image), then
// components under min_size merged along the same edge order. labels (H * W) gets the segment ids
// 0 .. S-1, numbered by their smallest pixel index; returns S.
int64_t felzenszwalb_cpu(const double* image, int64_t H, int64_t W, int64_t C, double scale,
                         int64_t min_size, int64_t* labels);

}  // namespace lcar
