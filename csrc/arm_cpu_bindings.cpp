// pybind11 bindings of the CPU ARM: numpy arrays in and out. Inputs of another float dtype or
// memory layout are converted (forcecast, C order); bad shapes or non-finite values raise
// ValueError; the GIL is released while computing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "arm_cpu.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

void check_ndim(const FloatArray& a, int ndim, const char* name, const char* layout) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " + layout + ", got " +
                                std::to_string(a.ndim()) + " dimensions");
  }
  for (int i = 0; i < ndim; ++i) {
    if (i > 0 && (a.shape(i) < 1 || a.shape(i) > INT_MAX)) {
      throw std::invalid_argument(std::string(name) + " has an empty or too large dimension " +
                                  std::to_string(i));
    }
  }
}

void check_finite(const FloatArray& a, const char* name) {
  const float* p = a.data();
  const py::ssize_t n = a.size();
  for (py::ssize_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) {
      throw std::invalid_argument(std::string(name) + " contains NaN or inf");
    }
  }
}

void check_images(const FloatArray& images) {
  check_ndim(images, 4, "images", "(B, 3, H, W)");
  if (images.shape(1) != 3) {
    throw std::invalid_argument("images must have 3 (RGB) channels, got " +
                                std::to_string(images.shape(1)));
  }
  check_finite(images, "images");
}

void check_map(const FloatArray& e_h, const FloatArray& images) {
  check_ndim(e_h, 3, "e_h", "(B, H, W)");
  if (e_h.shape(0) != images.shape(0) || e_h.shape(1) != images.shape(2) ||
      e_h.shape(2) != images.shape(3)) {
    throw std::invalid_argument("e_h must be (B, H, W) of images (B, 3, H, W)");
  }
  check_finite(e_h, "e_h");
}

py::tuple neighbour_table(const std::vector<int>& dilations, double w_p, double w_pos,
                          double sigma_eps) {
  const lcar::ArmParams p = lcar::make_params(dilations, 0.1, 0, w_p, 0.3, w_pos, sigma_eps);
  const lcar::NeighbourTable t = lcar::make_neighbour_table(p);
  py::array_t<int> offsets({static_cast<py::ssize_t>(t.count), static_cast<py::ssize_t>(2)});
  py::array_t<double> pos(static_cast<py::ssize_t>(t.count));
  auto o = offsets.mutable_unchecked<2>();
  auto q = pos.mutable_unchecked<1>();
  for (int k = 0; k < t.count; ++k) {
    o(k, 0) = t.dy[k];
    o(k, 1) = t.dx[k];
    q(k) = t.pos[k];
  }
  return py::make_tuple(offsets, pos);
}

py::array_t<float> affinities(const FloatArray& images, const std::vector<int>& dilations,
                              double w_p, double w_rgb, double w_pos, double sigma_eps,
                              int num_threads) {
  check_images(images);
  const lcar::ArmParams p = lcar::make_params(dilations, 0.1, 0, w_p, w_rgb, w_pos, sigma_eps);
  const lcar::NeighbourTable t = lcar::make_neighbour_table(p);
  const py::ssize_t B = images.shape(0);
  const int H = static_cast<int>(images.shape(2));
  const int W = static_cast<int>(images.shape(3));
  py::array_t<float> aff({B, static_cast<py::ssize_t>(t.count), static_cast<py::ssize_t>(H),
                          static_cast<py::ssize_t>(W)});
  const float* in = images.data();
  float* out = aff.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::affinities_cpu(in, out, B, H, W, p, num_threads);
  }
  return aff;
}

py::array_t<float> propagate(const FloatArray& e_h, const FloatArray& aff,
                             const std::vector<int>& dilations, double eta, int iterations,
                             int num_threads) {
  const lcar::ArmParams p = lcar::make_params(dilations, eta, iterations, 0.01, 0.3, 0.3, 1e-8);
  const lcar::NeighbourTable t = lcar::make_neighbour_table(p);
  check_ndim(e_h, 3, "e_h", "(B, H, W)");
  check_ndim(aff, 4, "aff", "(B, |N|, H, W)");
  if (aff.shape(0) != e_h.shape(0) || aff.shape(1) != t.count || aff.shape(2) != e_h.shape(1) ||
      aff.shape(3) != e_h.shape(2)) {
    throw std::invalid_argument("aff must be (B, 8 * len(dilations), H, W) of e_h (B, H, W)");
  }
  check_finite(e_h, "e_h");
  check_finite(aff, "aff");
  const py::ssize_t B = e_h.shape(0);
  const int H = static_cast<int>(e_h.shape(1));
  const int W = static_cast<int>(e_h.shape(2));
  py::array_t<float> out({B, static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(W)});
  const float* e = e_h.data();
  const float* a = aff.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::propagate_cpu(e, a, o, B, H, W, p, num_threads);
  }
  return out;
}

py::array_t<float> refine(const FloatArray& e_h, const FloatArray& images,
                          const std::vector<int>& dilations, double eta, int iterations, double w_p,
                          double w_rgb, double w_pos, double sigma_eps, int num_threads) {
  check_images(images);
  check_map(e_h, images);
  const lcar::ArmParams p = lcar::make_params(dilations, eta, iterations, w_p, w_rgb, w_pos, sigma_eps);
  const py::ssize_t B = e_h.shape(0);
  const int H = static_cast<int>(e_h.shape(1));
  const int W = static_cast<int>(e_h.shape(2));
  py::array_t<float> out({B, static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(W)});
  const float* e = e_h.data();
  const float* img = images.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::refine_cpu(e, img, o, B, H, W, p, num_threads);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_arm_cpu, m) {
  m.doc() = "ARM (affinity refinement module, LCAR eqs. 7-9) on the CPU, float32, OpenMP";
  m.def("openmp_max_threads", &lcar::openmp_max_threads,
        "OpenMP threads used when num_threads <= 0 (1 without OpenMP)");
  m.def("neighbour_table", &neighbour_table, py::arg("dilations"), py::arg("w_p") = 0.01,
        py::arg("w_pos") = 0.3, py::arg("sigma_eps") = 1e-8,
        "Neighbour offsets (|N|, 2) int32 as (dy, dx) and the position term w_p * "
        "softmax_N(kappa_pos) (|N|,) float64");
  m.def("affinities", &affinities, py::arg("images"), py::arg("dilations"), py::arg("w_p") = 0.01,
        py::arg("w_rgb") = 0.3, py::arg("w_pos") = 0.3, py::arg("sigma_eps") = 1e-8,
        py::arg("num_threads") = 0,
        "Eqs. 7-8: images (B, 3, H, W) RGB -> kappa_aff (B, 8 * len(dilations), H, W)");
  m.def("propagate", &propagate, py::arg("e_h"), py::arg("aff"), py::arg("dilations"),
        py::arg("eta") = 0.1, py::arg("iterations") = 50, py::arg("num_threads") = 0,
        "Eq. 9 iterated: e_h (B, H, W), aff (B, |N|, H, W) -> (B, H, W), not normalised");
  m.def("refine", &refine, py::arg("e_h"), py::arg("images"), py::arg("dilations"),
        py::arg("eta") = 0.1, py::arg("iterations") = 50, py::arg("w_p") = 0.01,
        py::arg("w_rgb") = 0.3, py::arg("w_pos") = 0.3, py::arg("sigma_eps") = 1e-8,
        py::arg("num_threads") = 0,
        "Eqs. 7-9 then min-max: e_h (B, H, W), images (B, 3, H, W) -> (B, H, W) in [0, 1]");
}
