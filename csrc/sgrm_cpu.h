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
// 0 .. S-1, numbered by their smallest pixel index; returns S. H * W must fit in int32.
int64_t felzenszwalb_cpu(const double* image, int64_t H, int64_t W, int64_t C, double scale,
                         int64_t min_size, int64_t* labels);

// felzenszwalb_cpu on each of B images (B, H, W, C) -> labels (B, H * W); OpenMP over the images
// (num_threads <= 0: all).
void felzenszwalb_batch_cpu(const double* images, int64_t B, int64_t H, int64_t W, int64_t C,
                            double scale, int64_t min_size, int64_t* labels, int num_threads);

// The k x k patches of padded inputs (A, C, Hp, Wp) at the pixels (row + stride i, col + stride j),
// i < rows, j < cols (their top-left corners in the padded grid): out (A, C k k, rows cols), row
// c k k + ki k + kj of image a holding padded[a, c, row + ki + stride i, col + kj + stride j] (the
// layout of torch's F.unfold). The caller checks that the pixels lie inside. OpenMP over the
// output rows (num_threads <= 0: all).
void strided_patches_cpu(const float* padded, float* out, int64_t A, int64_t C, int64_t Hp,
                         int64_t Wp, int64_t k, int64_t stride, int64_t row, int64_t col,
                         int64_t rows, int64_t cols, int num_threads);

// The argmax of A Aggregation Nets whose later layers are all 1x1, at every pixel of their
// padded inputs (A, C, Hp, Wp) (replicate padding of k / 2): per net a, h = relu(w0 * x + b0)
// (w0 (A, width, C, k, k), b0 (A, width)), then n_hidden times h = relu(wh_l h + bh_l)
// (wh (A, n_hidden, width, width), bh (A, n_hidden, width)), then out = dw . h + db > 0
// (dw (A, width), db (A): the object logit's weights minus the background's). out (A, H, W)
// with H = Hp - k + 1, W = Wp - k + 1. OpenMP over the image rows (num_threads <= 0: all).
void pointwise_argmax_cpu(const float* padded, int64_t A, int64_t C, int64_t Hp, int64_t Wp,
                          int64_t k, const float* w0, const float* b0, int64_t width,
                          int64_t n_hidden, const float* wh, const float* bh, const float* dw,
                          const float* db, uint8_t* out, int num_threads);

}  // namespace lcar
