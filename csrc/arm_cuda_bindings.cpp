#include <pybind11/pybind11.h>

#include "arm_cuda.h"

PYBIND11_MODULE(_arm_cuda, m) {
  m.doc() = "ARM (affinity refinement module) on CUDA GPUs";
  m.def("device_count", &lcar::cuda_device_count, "CUDA devices visible (0 without a GPU or driver)");
}
