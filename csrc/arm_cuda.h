#pragma once

namespace lcar {
int cuda_device_count();
}
