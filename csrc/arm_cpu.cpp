// CPU ARM. Layout inside one image: images and maps are kept with their columns replicate-padded
// by P = max(dilations) on both sides (row stride Wp = W + 2P) so that every neighbour row is a
// contiguous, vectorisable slice; rows are clamped instead. Affinities are stored (H, |N|, W), so
// one output row reads one contiguous block of them. The row kernels are compiled for AVX-512,
// AVX2 and baseline x86-64 and picked at load time (GCC function multi-versioning).
#include "arm_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_common.h"

namespace lcar {

int openmp_max_threads() {
#ifdef LCAR_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

int max_dilation(const ArmParams& p) {
  return *std::max_element(p.dilations.begin(), p.dilations.end());
}

// Geometry of one padded image.
struct Frame {
  int H;
  int W;
  int P;   // column padding
  int Wp;  // padded row stride, W + 2P
  int64_t padded_plane() const { return static_cast<int64_t>(H) * Wp; }
};

// Replicate the first and last column of a padded row into its P padding columns.
void pad_row(float* row, const Frame& f) {
  float* r = row + f.P;
  for (int j = 1; j <= f.P; ++j) {
    r[-j] = r[0];
    r[f.W - 1 + j] = r[f.W - 1];
  }
}

// Pointer to the first column of neighbour row y + dy (clamped), shifted by dx.
inline const float* neighbour_row(const float* plane, const Frame& f, int y, int dy, int dx) {
  return plane + static_cast<int64_t>(clamp_index(y + dy, f.H)) * f.Wp + f.P + dx;
}

// exp(x) for x <= 0, written so that loops over it vectorise: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2 / 2, degree-10 Taylor polynomial (relative error < 3e-13, far below
// the float32 the affinities are stored in), 2^n assembled in the exponent bits. Arguments below
// -700 are clamped there (the result, about 1e-304, is then added to a sum >= 1).
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  x = x < -700.0 ? -700.0 : x;
  const double shifted = x * kLog2e + kShift;
  const double n = shifted - kShift;
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits;
  int64_t shift_bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  std::memcpy(&shift_bits, &kShift, sizeof shift_bits);
  const int64_t scale_bits = (bits - shift_bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// Eqs. 7-8 for row y: out (|N|, W) = softmax_N(kappa_rgb) + w_p softmax_N(kappa_pos). img holds
// 3 padded planes. buf: (7 + |N|) * W doubles of scratch. Same arithmetic as the reference, in
// double: unbiased std over the |N| neighbour values per channel, kappa_rgb averaged over
// channels, softmax with its maximum subtracted.
LCAR_SIMD_CLONES
void affinity_row(const float* img, const Frame& f, int y, const NeighbourTable& t, double w_rgb,
                  double sigma_eps, double* buf, float* out) {
  const int n = t.count;
  const int W = f.W;
  const int64_t pp = f.padded_plane();
  double* __restrict mean = buf;
  double* __restrict ss = buf + W;
  double* __restrict inv = buf + 2 * W;  // 3 rows: 1 / (w_rgb (sigma_c + eps))
  double* __restrict mx = buf + 5 * W;
  double* __restrict z = buf + 6 * W;
  double* __restrict logit = buf + 7 * W;  // n rows
  for (int c = 0; c < 3; ++c) {
    const float* plane = img + c * pp;
    std::fill(mean, mean + W, 0.0);
    for (int k = 0; k < n; ++k) {
      const float* __restrict s = neighbour_row(plane, f, y, t.dy[k], t.dx[k]);
      for (int x = 0; x < W; ++x) mean[x] += s[x];
    }
    for (int x = 0; x < W; ++x) mean[x] /= n;
    std::fill(ss, ss + W, 0.0);
    for (int k = 0; k < n; ++k) {
      const float* __restrict s = neighbour_row(plane, f, y, t.dy[k], t.dx[k]);
      for (int x = 0; x < W; ++x) {
        const double d = s[x] - mean[x];
        ss[x] += d * d;
      }
    }
    double* __restrict iv = inv + c * W;
    for (int x = 0; x < W; ++x) iv[x] = 1.0 / (w_rgb * (std::sqrt(ss[x] / (n - 1)) + sigma_eps));
  }
  std::fill(mx, mx + W, -INFINITY);
  for (int k = 0; k < n; ++k) {
    double* __restrict l = logit + static_cast<int64_t>(k) * W;
    std::fill(l, l + W, 0.0);
    for (int c = 0; c < 3; ++c) {
      const float* plane = img + c * pp;
      const float* __restrict s = neighbour_row(plane, f, y, t.dy[k], t.dx[k]);
      const float* __restrict centre = neighbour_row(plane, f, y, 0, 0);
      const double* __restrict iv = inv + c * W;
      for (int x = 0; x < W; ++x) {
        const double r = (static_cast<double>(s[x]) - centre[x]) * iv[x];
        l[x] += r * r;
      }
    }
    for (int x = 0; x < W; ++x) {
      l[x] = -l[x] / 3.0;
      mx[x] = l[x] > mx[x] ? l[x] : mx[x];
    }
  }
  std::fill(z, z + W, 0.0);
  for (int k = 0; k < n; ++k) {
    double* __restrict l = logit + static_cast<int64_t>(k) * W;
    for (int x = 0; x < W; ++x) {
      l[x] = exp_nonpositive(l[x] - mx[x]);
      z[x] += l[x];
    }
  }
  for (int k = 0; k < n; ++k) {
    const double* __restrict l = logit + static_cast<int64_t>(k) * W;
    float* __restrict o = out + static_cast<int64_t>(k) * W;
    const double pos = t.pos[k];
    for (int x = 0; x < W; ++x) o[x] = static_cast<float>(l[x] / z[x] + pos);
  }
}

// Eq. 9 for row y: dst = eta src + (1 - eta) sum_k aff_k src(neighbour k), neighbours summed in
// table order, float32; src and dst are padded planes, aff_row is (|N|, W); acc: W floats.
LCAR_SIMD_CLONES
void propagate_row(const float* src, const float* aff_row, float* dst, const Frame& f, int y,
                   const NeighbourTable& t, float eta, float* acc) {
  const int W = f.W;
  float* __restrict a = acc;
  std::fill(a, a + W, 0.0f);
  for (int k = 0; k < t.count; ++k) {
    const float* __restrict w = aff_row + static_cast<int64_t>(k) * W;
    const float* __restrict s = neighbour_row(src, f, y, t.dy[k], t.dx[k]);
    for (int x = 0; x < W; ++x) a[x] += w[x] * s[x];
  }
  const float* __restrict c = neighbour_row(src, f, y, 0, 0);
  float* __restrict d = dst + static_cast<int64_t>(y) * f.Wp + f.P;
  const float mix = 1.0f - eta;
  for (int x = 0; x < W; ++x) d[x] = eta * c[x] + mix * a[x];
  pad_row(dst + static_cast<int64_t>(y) * f.Wp, f);
}

// Copy planes (C, H, W) into padded planes (C, H, Wp).
void pad_planes(const float* in, float* out, int C, const Frame& f) {
  for (int c = 0; c < C; ++c) {
    for (int y = 0; y < f.H; ++y) {
      float* row = out + c * f.padded_plane() + static_cast<int64_t>(y) * f.Wp;
      std::memcpy(row + f.P, in + (static_cast<int64_t>(c) * f.H + y) * f.W, sizeof(float) * f.W);
      pad_row(row, f);
    }
  }
}

// Eqs. 7-8 for one image (3, H, W) -> aff (H, |N|, W).
void image_affinities(const float* image, float* aff, const Frame& f, const NeighbourTable& t,
                      const ArmParams& p, int threads) {
  std::vector<float> img(static_cast<size_t>(3 * f.padded_plane()));
  pad_planes(image, img.data(), 3, f);
  const int64_t row_block = static_cast<int64_t>(t.count) * f.W;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<double> buf(static_cast<size_t>((7 + t.count) * static_cast<int64_t>(f.W)));
#pragma omp for schedule(static)
    for (int y = 0; y < f.H; ++y) {
      affinity_row(img.data(), f, y, t, p.w_rgb, p.sigma_eps, buf.data(), aff + y * row_block);
    }
  }
}

// Eq. 9 iterated for one image: e_h (H, W), aff (H, |N|, W) -> out (H, W).
void image_propagate(const float* e_h, const float* aff, float* out, const Frame& f,
                     const NeighbourTable& t, const ArmParams& p, int threads) {
  std::vector<float> a(static_cast<size_t>(f.padded_plane()));
  std::vector<float> b(a.size());
  pad_planes(e_h, a.data(), 1, f);
  const int64_t row_block = static_cast<int64_t>(t.count) * f.W;
  const float eta = static_cast<float>(p.eta);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> acc(static_cast<size_t>(f.W));
    float* src = a.data();
    float* dst = b.data();
    for (int it = 0; it < p.iterations; ++it) {
#pragma omp for schedule(static)
      for (int y = 0; y < f.H; ++y) {
        propagate_row(src, aff + y * row_block, dst, f, y, t, eta, acc.data());
      }
      // The implicit barrier of the omp for completes dst before it becomes src.
      std::swap(src, dst);
    }
  }
  const float* result = (p.iterations % 2 == 0) ? a.data() : b.data();
  for (int y = 0; y < f.H; ++y) {
    std::memcpy(out + static_cast<int64_t>(y) * f.W, result + static_cast<int64_t>(y) * f.Wp + f.P,
                sizeof(float) * f.W);
  }
}

void minmax_image(float* v, int64_t n) {
  const auto [lo_it, hi_it] = std::minmax_element(v, v + n);
  const float lo = *lo_it;
  const float range = *hi_it - lo;
  for (int64_t i = 0; i < n; ++i) v[i] = range > 0.0f ? (v[i] - lo) / range : 0.0f;
}

// (|N|, H, W) <-> (H, |N|, W) for one image.
void swap_outer_axes(const float* in, float* out, int64_t A, int64_t Bdim, int64_t W) {
  for (int64_t i = 0; i < A; ++i) {
    for (int64_t j = 0; j < Bdim; ++j) {
      std::memcpy(out + (j * A + i) * W, in + (i * Bdim + j) * W, sizeof(float) * W);
    }
  }
}

Frame make_frame(int H, int W, const ArmParams& p) {
  const int P = max_dilation(p);
  return Frame{H, W, P, W + 2 * P};
}

// Eqs. 7-9 and min-max for one image; aff: scratch of (H, |N|, W) floats.
void refine_image(const float* e_h, const float* image, float* out, float* aff, const Frame& f,
                  const NeighbourTable& t, const ArmParams& p, int threads) {
  image_affinities(image, aff, f, t, p, threads);
  image_propagate(e_h, aff, out, f, t, p, threads);
  minmax_image(out, static_cast<int64_t>(f.H) * f.W);
}

}  // namespace

void affinities_cpu(const float* images, float* aff, int64_t B, int H, int W,
                    const ArmParams& params, int num_threads) {
  const NeighbourTable t = make_neighbour_table(params);
  const Frame f = make_frame(H, W, params);
  const int64_t plane = static_cast<int64_t>(H) * W;
  std::vector<float> hkw(static_cast<size_t>(t.count * plane));
  for (int64_t b = 0; b < B; ++b) {
    image_affinities(images + b * 3 * plane, hkw.data(), f, t, params,
                     resolve_threads(num_threads));
    swap_outer_axes(hkw.data(), aff + b * t.count * plane, H, t.count, W);
  }
}

void propagate_cpu(const float* e_h, const float* aff, float* out, int64_t B, int H, int W,
                   const ArmParams& params, int num_threads) {
  const NeighbourTable t = make_neighbour_table(params);
  const Frame f = make_frame(H, W, params);
  const int64_t plane = static_cast<int64_t>(H) * W;
  std::vector<float> hkw(static_cast<size_t>(t.count * plane));
  for (int64_t b = 0; b < B; ++b) {
    swap_outer_axes(aff + b * t.count * plane, hkw.data(), t.count, H, W);
    image_propagate(e_h + b * plane, hkw.data(), out + b * plane, f, t, params,
                    resolve_threads(num_threads));
  }
}

void refine_cpu(const float* e_h, const float* images, float* out, int64_t B, int H, int W,
                const ArmParams& params, int num_threads) {
  const NeighbourTable t = make_neighbour_table(params);
  const Frame f = make_frame(H, W, params);
  const int64_t plane = static_cast<int64_t>(H) * W;
  const size_t aff_size = static_cast<size_t>(t.count * plane);
  const int threads = resolve_threads(num_threads);
  if (threads > 1 && B >= threads) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> aff(aff_size);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        refine_image(e_h + b * plane, images + b * 3 * plane, out + b * plane, aff.data(), f, t,
                     params, 1);
      }
    }
  } else {
    std::vector<float> aff(aff_size);
    for (int64_t b = 0; b < B; ++b) {
      refine_image(e_h + b * plane, images + b * 3 * plane, out + b * plane, aff.data(), f, t,
                   params, threads);
    }
  }
}

}  // namespace lcar
