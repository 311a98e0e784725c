#include <pybind11/pybind11.h>

#include "arm_cpu.h"

PYBIND11_MODULE(_arm_cpu, m) {
  m.doc() = "ARM (affinity refinement module) on the CPU";
  m.def("openmp_max_threads", &lcar::openmp_max_threads, "OpenMP threads available (1 without OpenMP)");
}
