#include "arm_cpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef LCAR_HAVE_OPENMP
#include <omp.h>
#endif

namespace lcar {

int openmp_max_threads() {
#ifdef LCAR_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : openmp_max_threads();
}

// Eq. 9 for row y of one image: acc[x] = sum_k aff_k[y, x] * src[clamp(y + dy_k), clamp(x + dx_k)],
// then dst = eta * src + (1 - eta) * acc. Columns whose neighbour lies inside the row are
// processed by a contiguous (vectorisable) loop, the clamped border columns separately.
void propagate_row(const float* src, const float* aff, float* dst, float* acc, int64_t plane,
                   int H, int W, int y, const NeighbourTable& t, float eta) {
  std::fill(acc, acc + W, 0.0f);
  for (int k = 0; k < t.count; ++k) {
    const float* a = aff + k * plane + static_cast<int64_t>(y) * W;
    const float* s = src + static_cast<int64_t>(clamp_index(y + t.dy[k], H)) * W;
    const int dx = t.dx[k];
    const int lo = std::min(W, std::max(0, -dx));      // first x with x + dx >= 0
    const int hi = std::max(lo, std::min(W, W - dx));  // first x with x + dx >= W
    for (int x = 0; x < lo; ++x) acc[x] += a[x] * s[clamp_index(x + dx, W)];
    const float* __restrict s_shift = s + dx;
    float* __restrict acc_r = acc;
    const float* __restrict a_r = a;
#pragma omp simd
    for (int x = lo; x < hi; ++x) acc_r[x] += a_r[x] * s_shift[x];
    for (int x = hi; x < W; ++x) acc[x] += a[x] * s[clamp_index(x + dx, W)];
  }
  const float* c = src + static_cast<int64_t>(y) * W;
  float* d = dst + static_cast<int64_t>(y) * W;
  const float keep = eta;
  const float mix = 1.0f - eta;
  for (int x = 0; x < W; ++x) d[x] = keep * c[x] + mix * acc[x];
}

}  // namespace

void affinities_cpu(const float* images, float* aff, int64_t B, int H, int W,
                    const NeighbourTable& table, const ArmParams& params, int num_threads) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t rows = B * H;
  [[maybe_unused]] const int threads = resolve_threads(num_threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / H;
    const int y = static_cast<int>(r % H);
    const float* img = images + b * 3 * plane;
    float* out = aff + b * table.count * plane;
    for (int x = 0; x < W; ++x) {
      pixel_affinities(img, plane, H, W, y, x, table, params.w_rgb, params.sigma_eps,
                       out + static_cast<int64_t>(y) * W + x);
    }
  }
}

void propagate_cpu(const float* e_h, const float* aff, float* out, int64_t B, int H, int W,
                   const NeighbourTable& table, const ArmParams& params, int num_threads) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int iterations = params.iterations;
  if (iterations == 0) {
    std::memcpy(out, e_h, sizeof(float) * B * plane);
    return;
  }
  // Ping-pong between out and work, starting so that the last iteration writes into out.
  std::vector<float> work(static_cast<size_t>(B * plane));
  const float eta = static_cast<float>(params.eta);
  const int64_t rows = B * H;
  [[maybe_unused]] const int threads = resolve_threads(num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> acc(static_cast<size_t>(W));
    const float* src = e_h;
    float* dst = (iterations % 2 == 1) ? out : work.data();
    float* other = (iterations % 2 == 1) ? work.data() : out;
    for (int it = 0; it < iterations; ++it) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = r / H;
        const int y = static_cast<int>(r % H);
        propagate_row(src + b * plane, aff + b * table.count * plane, dst + b * plane, acc.data(),
                      plane, H, W, y, table, eta);
      }
      // The implicit barrier of the omp for makes dst complete before it becomes src.
      src = dst;
      std::swap(dst, other);
    }
  }
}

void minmax_cpu(float* x, int64_t B, int64_t plane) {
  for (int64_t b = 0; b < B; ++b) {
    float* v = x + b * plane;
    const auto [mn_it, mx_it] = std::minmax_element(v, v + plane);
    const float mn = *mn_it;
    const float range = *mx_it - mn;
    for (int64_t i = 0; i < plane; ++i) v[i] = range > 0.0f ? (v[i] - mn) / range : 0.0f;
  }
}

void refine_cpu(const float* e_h, const float* images, float* out, int64_t B, int H, int W,
                const ArmParams& params, int num_threads) {
  const NeighbourTable table = make_neighbour_table(params);
  const int64_t plane = static_cast<int64_t>(H) * W;
  std::vector<float> aff(static_cast<size_t>(table.count * plane));
  for (int64_t b = 0; b < B; ++b) {
    affinities_cpu(images + b * 3 * plane, aff.data(), 1, H, W, table, params, num_threads);
    propagate_cpu(e_h + b * plane, aff.data(), out + b * plane, 1, H, W, table, params,
                  num_threads);
  }
  minmax_cpu(out, B, plane);
}

}  // namespace lcar
