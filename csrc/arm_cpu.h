#pragma once

namespace lcar {
int openmp_max_threads();
}
