// ARM (LCAR eqs. 7-9): definitions shared by the CPU and the CUDA implementations: the settings,
// the neighbour table (offsets and position term, built on the host) and border clamping.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#if defined(__CUDACC__)
#define LCAR_HD __host__ __device__
#else
#define LCAR_HD
#endif

namespace lcar {

constexpr int kNeighboursPerDilation = 8;
constexpr int kMaxDilations = 16;
constexpr int kMaxNeighbours = kNeighboursPerDilation * kMaxDilations;

// Neighbour set N of eqs. 8-9 and the (pixel independent) position term of eq. 8.
// Small enough (about 2 KiB) to be passed to a CUDA kernel by value.
struct NeighbourTable {
  int count = 0;                    // |N| = 8 * number of dilations
  int dy[kMaxNeighbours] = {};      // row offset of neighbour k
  int dx[kMaxNeighbours] = {};      // column offset of neighbour k
  double pos[kMaxNeighbours] = {};  // w_p * softmax_N(kappa_pos)[k]
};

// Settings of one ARM run. The defaults and their meaning live in one place only, the Python
// lcar_deploy.stages.arm.ArmConfig (its native_params() builds this struct); here every field is
// set by the caller: there is no default constructor. Bound to Python once, with a validating
// keyword-only constructor and read-only fields (arm_bindings.cpp).
struct ArmParams {
  std::vector<int> dilations;  // neighbour set N: 8 neighbours per dilation, |N| = 8 * size
  double eta;                  // eq. 9 update rate
  int iterations;              // eq. 9 updates
  double w_p;                  // eq. 8 position term factor
  double w_rgb;                // eq. 7 colour kernel scale
  double w_pos;                // eq. 7 position kernel scale
  double sigma_eps;            // added to the standard deviations of eq. 7

  ArmParams(std::vector<int> dilations_, double eta_, int iterations_, double w_p_,
            double w_rgb_, double w_pos_, double sigma_eps_)
      : dilations(std::move(dilations_)),
        eta(eta_),
        iterations(iterations_),
        w_p(w_p_),
        w_rgb(w_rgb_),
        w_pos(w_pos_),
        sigma_eps(sigma_eps_) {}
};

namespace detail {
template <typename T>
std::string got(const T& v) {
  std::ostringstream os;
  os << ", got " << v;
  return os.str();
}
}  // namespace detail

// The one check of the settings (std::invalid_argument, ValueError in Python): run by the bound
// constructor and by make_neighbour_table, which every kernel entry point builds first.
inline void check_params(const ArmParams& p) {
  using detail::got;
  if (p.dilations.empty()) throw std::invalid_argument("dilations must not be empty");
  if (p.dilations.size() > static_cast<size_t>(kMaxDilations)) {
    throw std::invalid_argument("at most " + std::to_string(kMaxDilations) + " dilations" +
                                got(p.dilations.size()));
  }
  for (int d : p.dilations) {
    if (d < 1) throw std::invalid_argument("dilations must be >= 1" + got(d));
  }
  if (!(p.eta >= 0.0 && p.eta <= 1.0)) {
    throw std::invalid_argument("eta must be in [0, 1]" + got(p.eta));
  }
  if (p.iterations < 0) {
    throw std::invalid_argument("iterations must be >= 0" + got(p.iterations));
  }
  if (!(p.w_p >= 0.0 && isfinite(p.w_p))) {
    throw std::invalid_argument("w_p must be >= 0" + got(p.w_p));
  }
  if (!(p.w_rgb > 0.0 && isfinite(p.w_rgb))) {
    throw std::invalid_argument("w_rgb must be > 0" + got(p.w_rgb));
  }
  if (!(p.w_pos > 0.0 && isfinite(p.w_pos))) {
    throw std::invalid_argument("w_pos must be > 0" + got(p.w_pos));
  }
  if (!(p.sigma_eps >= 0.0 && isfinite(p.sigma_eps))) {
    throw std::invalid_argument("sigma_eps must be >= 0" + got(p.sigma_eps));
  }
}

// Offsets in PAR's order, for each dilation d:
//   (-d,-d) (-d,0) (-d,d) (0,-d) (0,d) (d,-d) (d,0) (d,d).
// Position term: kappa_pos = -(dist / (w_pos * (sigma_pos + eps)))^2 with dist = |offset|
// (d or sqrt(2) d) and sigma_pos the unbiased standard deviation of the |N| distances.
inline NeighbourTable make_neighbour_table(const ArmParams& p) {
  check_params(p);
  static constexpr int kUnitDy[kNeighboursPerDilation] = {-1, -1, -1, 0, 0, 1, 1, 1};
  static constexpr int kUnitDx[kNeighboursPerDilation] = {-1, 0, 1, -1, 1, -1, 0, 1};
  NeighbourTable t;
  std::vector<double> dist;
  for (int d : p.dilations) {
    for (int j = 0; j < kNeighboursPerDilation; ++j) {
      t.dy[t.count] = kUnitDy[j] * d;
      t.dx[t.count] = kUnitDx[j] * d;
      dist.push_back(sqrt(static_cast<double>(kUnitDy[j] * kUnitDy[j] + kUnitDx[j] * kUnitDx[j])) *
                     d);
      ++t.count;
    }
  }
  const int n = t.count;
  double mean = 0.0;
  for (double v : dist) mean += v;
  mean /= n;
  double ss = 0.0;
  for (double v : dist) ss += (v - mean) * (v - mean);
  const double scale = p.w_pos * (sqrt(ss / (n - 1)) + p.sigma_eps);
  double logit_max = -INFINITY;
  std::vector<double> logit(n);
  for (int k = 0; k < n; ++k) {
    logit[k] = -(dist[k] / scale) * (dist[k] / scale);
    logit_max = logit[k] > logit_max ? logit[k] : logit_max;
  }
  double z = 0.0;
  for (int k = 0; k < n; ++k) z += exp(logit[k] - logit_max);
  for (int k = 0; k < n; ++k) t.pos[k] = p.w_p * exp(logit[k] - logit_max) / z;
  return t;
}

LCAR_HD inline int clamp_index(int v, int n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

}  // namespace lcar
