// Forwards to the CUDA-on-HIP-CPU shim (tests/cuda_emu/shim/cuda_on_hipcpu.h).
#pragma once
#include "cuda_on_hipcpu.h"
