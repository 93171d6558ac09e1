// Device helpers over the split partial sums written by paired_column_moments_cuda.
#pragma once

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

// The finalize kernels of VICReg and Barlow Twins run one column per thread over
// ceil(D / kFinalizeThreads) blocks; each block leaves up to 3 double sums and its NonFiniteFlag
// bits in the workspace, and a one-block kernel merges them in a fixed order (deterministic).
// 256 threads leave each thread up to 255 registers on every architecture.
constexpr int kFinalizeThreads = 256;
constexpr int kFinalizeSumsPerBlock = 3;

struct FinalizeBlockPartials {
  double* sums;  // (num_blocks, kFinalizeSumsPerBlock)
  int* flags;    // (num_blocks)
};

inline int finalize_num_blocks(int64_t D) {
  return static_cast<int>((D + kFinalizeThreads - 1) / kFinalizeThreads);
}

inline int64_t finalize_workspace_bytes(int64_t D) {
  return static_cast<int64_t>(finalize_num_blocks(D)) *
         (kFinalizeSumsPerBlock * static_cast<int64_t>(sizeof(double)) +
          static_cast<int64_t>(sizeof(int)));
}

inline FinalizeBlockPartials finalize_block_partials(void* workspace, int num_blocks) {
  double* sums = static_cast<double*>(workspace);
  return {sums, reinterpret_cast<int*>(sums + static_cast<int64_t>(num_blocks) *
                                                  kFinalizeSumsPerBlock)};
}

// First stage: the block's totals of every thread's column sums and NonFiniteFlag bits go to
// block_partials[blockIdx.x]. Every thread of the block calls it (barriers inside).
__device__ inline void store_finalize_block(FinalizeBlockPartials block_partials,
                                            double (&sums)[kFinalizeSumsPerBlock], int flags,
                                            double* shared, int* shared_flags) {
  if (threadIdx.x == 0) *shared_flags = 0;
  __syncthreads();
  if (flags) atomicOr(shared_flags, flags);
  for (int i = 0; i < kFinalizeSumsPerBlock; ++i) {
    sums[i] = cuda::block_reduce_sum<double>(sums[i], shared);
  }
  if (threadIdx.x == 0) {
    double* out = block_partials.sums + static_cast<int64_t>(blockIdx.x) * kFinalizeSumsPerBlock;
    for (int i = 0; i < kFinalizeSumsPerBlock; ++i) out[i] = sums[i];
    block_partials.flags[blockIdx.x] = *shared_flags;
  }
}

// Second stage (one block): the sums over all blocks in a fixed order (deterministic), valid in
// every thread; returns the OR of the blocks' flags. Every thread of the block calls it.
__device__ inline int merge_finalize_blocks(FinalizeBlockPartials block_partials, int num_blocks,
                                            double (&sums)[kFinalizeSumsPerBlock],
                                            double* shared, int* shared_flags) {
  if (threadIdx.x == 0) *shared_flags = 0;
  __syncthreads();
  int flags = 0;
  for (int i = 0; i < kFinalizeSumsPerBlock; ++i) sums[i] = 0.0;
  for (int b = threadIdx.x; b < num_blocks; b += blockDim.x) {
    const double* p = block_partials.sums + static_cast<int64_t>(b) * kFinalizeSumsPerBlock;
    for (int i = 0; i < kFinalizeSumsPerBlock; ++i) sums[i] += p[i];
    flags |= block_partials.flags[b];
  }
  if (flags) atomicOr(shared_flags, flags);
  for (int i = 0; i < kFinalizeSumsPerBlock; ++i) {
    sums[i] = cuda::block_reduce_sum<double>(sums[i], shared);
  }
  return *shared_flags;  // written before the reductions' barriers
}

// s[m] = sum over the row splits of moment m of column d, in double (m < kSumDiffSq + 1);
// returns the column's NonFiniteFlag bits. The partials are doubles for every input dtype.
__device__ __forceinline__ int sum_moment_splits(const double* __restrict__ partials,
                                                 int64_t num_splits, int64_t D, int64_t d,
                                                 double (&s)[kNumMoments - 2]) {
#pragma unroll
  for (int m = 0; m < kNumMoments - 2; ++m) s[m] = 0.0;
  for (int64_t k = 0; k < num_splits; ++k) {
    const double* p = partials + k * kNumMoments * D;
#pragma unroll
    for (int m = 0; m < kNumMoments - 2; ++m) s[m] += p[m * D + d];
  }
  int flags = 0;
  if (!isfinite(s[kSumA]) || !isfinite(s[kSumAA])) flags |= kNonFiniteA;
  if (!isfinite(s[kSumB]) || !isfinite(s[kSumBB])) flags |= kNonFiniteB;
  return flags;
}

// Column mean of view a (b when view == 1) from the shift (first row) and the shifted sum.
__device__ __forceinline__ double column_mean(const double* __restrict__ partials, int64_t D,
                                              int64_t d, int view, double shifted_sum, double n) {
  return partials[(view == 0 ? kShiftA : kShiftB) * D + d] + shifted_sum / n;
}

}  // namespace covariance
}  // namespace jem_fast
