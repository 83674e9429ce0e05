// Launch overhead: the T-step loop of a forward or backward is captured once into a CUDA graph
// and replayed while every pointer and size it uses is the same (the key), as in a training loop
// whose allocations repeat. A replay performs exactly the launches a direct run would. Plain CUDA
// runtime, no torch, no cuBLAS types.
//
// FLASHRNN_ALT_GRAPHS=0 turns it off (read at every call). Any capture failure runs the work
// directly and turns graphs off for the process.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <sstream>
#include <string>

namespace flashrnn {
namespace alternating {

using Launch = std::function<std::string(cudaStream_t)>;

// Queue `launch`'s work on `stream`: through the graph cached under `key`, or directly.
std::string run_cached(const std::string& key, cudaStream_t stream, const Launch& launch);

// Builds a key from every argument that shapes the launches (pointers, sizes, flags).
class KeyBuilder {
 public:
  template <typename T>
  KeyBuilder& operator<<(const T& value) {
    out_ << value << '|';
    return *this;
  }
  std::string str() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

}  // namespace alternating
}  // namespace flashrnn
