// A timing probe for the steps of the persistent fused kernels (fused_cluster's PROFILE define).
// Plain CUDA C++.
#pragma once

#include <stdio.h>

namespace flashrnn {
namespace fused_split {

// A timing probe of a persistent kernel's step (ON = the family's PROFILE define; results stay
// right): mark(i) adds the SM clocks since the previous mark to phase i, and report() prints, from
// lane 0 of the warp, the mean clocks a step of each phase and their sum. Off, every call is empty.
template <bool ON, int N>
struct StepClock {
  long long sum[N > 0 ? N : 1], last;
  __device__ void start() {
    if (ON) {
#pragma unroll
      for (int i = 0; i < N; ++i) sum[i] = 0;
      last = clock64();
    }
  }
  __device__ void mark(int i) {
    if (ON) {
      const long long now = clock64();
      sum[i] += now - last;
      last = now;
    }
  }
  // one line: `tag block warp: c0 .. c7 | total`, clocks per step of `steps` (phases past N: 0)
  __device__ void report(const char* tag, int block, int warp, int lane, int steps) const {
    static_assert(N <= 8, "at most 8 phases");
    if (!ON || lane != 0 || steps <= 0) return;
    long long c[8], tot = 0;
    for (int i = 0; i < 8; ++i) {
      c[i] = i < N ? sum[i] / steps : 0;
      tot += c[i];
    }
    printf("%s block %d warp %d: %lld %lld %lld %lld %lld %lld %lld %lld | %lld\n", tag, block, warp, c[0], c[1], c[2],
           c[3], c[4], c[5], c[6], c[7], tot);
  }
};

}  // namespace fused_split
}  // namespace flashrnn
