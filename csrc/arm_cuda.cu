#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "arm_cuda.h"

namespace lcar {

namespace {

constexpr int kThreads = 256;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ARM CUDA: ") + what + ": " + cudaGetErrorString(err));
  }
}

void use_device(int device) {
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count) {
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " not available (" +
                                std::to_string(count) + " visible)");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

// Eqs. 7-8 at pixel (y, x) of one image `img` (3 planes of H*W floats, RGB): writes the |N|
// affinities kappa_aff to out[k * plane]. Replicate padding: neighbour coordinates are clamped.
// sigma_rgb = unbiased std of the neighbour values per channel; kappa_rgb averaged over channels.
// Evaluated in double (as the reference and the CPU backend); the softmax subtracts its maximum,
// so flat regions give uniform weights. Neighbour values and logits are re-read / recomputed in
// each pass instead of being kept in per-thread arrays (no local memory).
__device__ inline void pixel_affinities(const float* img, int64_t plane, int H, int W, int y, int x,
                                        const NeighbourTable& t, double w_rgb, double sigma_eps,
                                        float* out) {
  const int n = t.count;
  auto at = [&](int k) {
    return static_cast<int64_t>(clamp_index(y + t.dy[k], H)) * W + clamp_index(x + t.dx[k], W);
  };
  double centre[3];
  double inv_scale[3];
  for (int c = 0; c < 3; ++c) {
    const float* ch = img + c * plane;
    centre[c] = ch[static_cast<int64_t>(y) * W + x];
    double sum = 0.0;
    for (int k = 0; k < n; ++k) sum += ch[at(k)];
    const double mean = sum / n;
    double ss = 0.0;
    for (int k = 0; k < n; ++k) {
      const double d = ch[at(k)] - mean;
      ss += d * d;
    }
    inv_scale[c] = 1.0 / (w_rgb * (sqrt(ss / (n - 1)) + sigma_eps));
  }
  auto logit = [&](int k) {
    const int64_t q = at(k);
    double acc = 0.0;
    for (int c = 0; c < 3; ++c) {
      const double r = (static_cast<double>(img[c * plane + q]) - centre[c]) * inv_scale[c];
      acc += r * r;
    }
    return -acc / 3.0;
  };
  double m = -INFINITY;
  for (int k = 0; k < n; ++k) m = fmax(m, logit(k));
  double z = 0.0;
  for (int k = 0; k < n; ++k) z += exp(logit(k) - m);
  for (int k = 0; k < n; ++k) {
    out[k * plane] = static_cast<float>(exp(logit(k) - m) / z + t.pos[k]);
  }
}

// Eq. 9 at pixel (y, x): eta * E(y, x) + (1 - eta) * sum_k kappa_aff[k] * E(neighbour k), float32,
// neighbours summed in table order (as the CPU backend).
__device__ inline float propagate_pixel(const float* src, const float* aff, int64_t plane, int H,
                                        int W, int y, int x, const NeighbourTable& t, float eta) {
  const int64_t p = static_cast<int64_t>(y) * W + x;
  float acc = 0.0f;
  for (int k = 0; k < t.count; ++k) {
    acc += aff[k * plane + p] *
           src[static_cast<int64_t>(clamp_index(y + t.dy[k], H)) * W + clamp_index(x + t.dx[k], W)];
  }
  return eta * src[p] + (1.0f - eta) * acc;
}

// One thread per pixel of the batch.
__global__ void affinity_kernel(const float* __restrict__ images, float* __restrict__ aff,
                                int64_t B, int H, int W, const __grid_constant__ NeighbourTable t,
                                double w_rgb, double sigma_eps) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * plane) return;
  const int64_t b = i / plane;
  const int64_t p = i - b * plane;
  const int y = static_cast<int>(p / W);
  const int x = static_cast<int>(p - static_cast<int64_t>(y) * W);
  pixel_affinities(images + b * 3 * plane, plane, H, W, y, x, t, w_rgb, sigma_eps,
                   aff + b * t.count * plane + p);
}

// One eq. 9 update, one thread per pixel of the batch.
__global__ void propagate_kernel(const float* __restrict__ src, const float* __restrict__ aff,
                                 float* __restrict__ dst, int64_t B, int H, int W,
                                 const __grid_constant__ NeighbourTable t, float eta) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * plane) return;
  const int64_t b = i / plane;
  const int64_t p = i - b * plane;
  const int y = static_cast<int>(p / W);
  const int x = static_cast<int>(p - static_cast<int64_t>(y) * W);
  dst[i] = propagate_pixel(src + b * plane, aff + b * t.count * plane, plane, H, W, y, x, t, eta);
}

// Per-image min-max to [0, 1] in place (a constant image becomes 0); one block per image.
__global__ void minmax_kernel(float* x, int64_t plane) {
  __shared__ float smin[kThreads];
  __shared__ float smax[kThreads];
  float* v = x + static_cast<int64_t>(blockIdx.x) * plane;
  float mn = INFINITY;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < plane; i += blockDim.x) {
    mn = fminf(mn, v[i]);
    mx = fmaxf(mx, v[i]);
  }
  smin[threadIdx.x] = mn;
  smax[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      smin[threadIdx.x] = fminf(smin[threadIdx.x], smin[threadIdx.x + s]);
      smax[threadIdx.x] = fmaxf(smax[threadIdx.x], smax[threadIdx.x + s]);
    }
    __syncthreads();
  }
  mn = smin[0];
  const float range = smax[0] - mn;
  for (int64_t i = threadIdx.x; i < plane; i += blockDim.x) {
    v[i] = range > 0.0f ? (v[i] - mn) / range : 0.0f;
  }
}

void launch_affinities(const float* images, float* aff, int64_t B, int H, int W,
                       const NeighbourTable& t, const ArmParams& p, cudaStream_t s) {
  const int64_t n = B * H * static_cast<int64_t>(W);
  affinity_kernel<<<blocks_for(n), kThreads, 0, s>>>(images, aff, B, H, W, t, p.w_rgb, p.sigma_eps);
  check(cudaGetLastError(), "affinity kernel launch");
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

void affinities_cuda(const float* images, float* aff, int64_t B, int H, int W,
                     const ArmParams& params, int device, std::uintptr_t stream) {
  const NeighbourTable t = make_neighbour_table(params);
  if (B == 0) return;
  use_device(device);
  launch_affinities(images, aff, B, H, W, t, params, reinterpret_cast<cudaStream_t>(stream));
}

void refine_cuda(const float* e_h, const float* images, float* aff, float* work, float* out,
                 int64_t B, int H, int W, const ArmParams& params, int device,
                 std::uintptr_t stream) {
  const NeighbourTable t = make_neighbour_table(params);
  if (B == 0) return;
  use_device(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t n = B * plane;
  launch_affinities(images, aff, B, H, W, t, params, s);
  const int iterations = params.iterations;
  if (iterations == 0) {
    check(cudaMemcpyAsync(out, e_h, sizeof(float) * n, cudaMemcpyDeviceToDevice, s),
          "cudaMemcpyAsync");
  }
  // Ping-pong between out and work, starting so that the last iteration writes into out.
  const float* src = e_h;
  float* dst = (iterations % 2 == 1) ? out : work;
  float* other = (iterations % 2 == 1) ? work : out;
  const float eta = static_cast<float>(params.eta);
  for (int it = 0; it < iterations; ++it) {
    propagate_kernel<<<blocks_for(n), kThreads, 0, s>>>(src, aff, dst, B, H, W, t, eta);
    check(cudaGetLastError(), "propagate kernel launch");
    src = dst;
    float* next = other;
    other = dst;
    dst = next;
  }
  minmax_kernel<<<static_cast<unsigned int>(B), kThreads, 0, s>>>(out, plane);
  check(cudaGetLastError(), "min-max kernel launch");
}

}  // namespace lcar
