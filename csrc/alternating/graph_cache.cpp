// CUDA graph cache for the alternating kernels (see graph_cache.h).
#include "graph_cache.h"

#include <cstdlib>
#include <list>
#include <unordered_map>
#include <utility>

namespace flashrnn {
namespace alternating {

namespace {

constexpr size_t kCapacity = 32;  // cached executable graphs per (thread, device)

struct Cache {
  std::list<std::pair<std::string, cudaGraphExec_t>> lru;  // most recent first
  std::unordered_map<std::string, std::list<std::pair<std::string, cudaGraphExec_t>>::iterator> index;
  cudaStream_t capture_stream = nullptr;
};

bool g_disabled = false;

bool enabled() {
  if (g_disabled) return false;
  const char* env = std::getenv("FLASHRNN_ALT_GRAPHS");
  return env == nullptr || std::string(env) != "0";
}

Cache& cache_for_device() {
  thread_local std::unordered_map<int, Cache> caches;
  int device = 0;
  cudaGetDevice(&device);
  return caches[device];
}

std::string capture(Cache& cache, const Launch& launch, cudaGraphExec_t* exec) {
  if (cache.capture_stream == nullptr &&
      cudaStreamCreateWithFlags(&cache.capture_stream, cudaStreamNonBlocking) != cudaSuccess) {
    return "cudaStreamCreate failed";
  }
  if (cudaStreamBeginCapture(cache.capture_stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    return "cudaStreamBeginCapture failed";
  }
  std::string err = launch(cache.capture_stream);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(cache.capture_stream, &graph);
  if (err.empty() && end != cudaSuccess) err = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end);
  if (err.empty() && cudaGraphInstantiate(exec, graph, 0) != cudaSuccess) err = "cudaGraphInstantiate failed";
  if (graph != nullptr) cudaGraphDestroy(graph);
  return err;
}

}  // namespace

std::string run_cached(const std::string& key, cudaStream_t stream, const Launch& launch) {
  if (!enabled()) return launch(stream);
  Cache& cache = cache_for_device();
  auto hit = cache.index.find(key);
  if (hit == cache.index.end()) {
    cudaGraphExec_t exec = nullptr;
    if (!capture(cache, launch, &exec).empty()) {  // not capturable here: run directly from now on
      g_disabled = true;
      cudaGetLastError();
      return launch(stream);
    }
    cache.lru.emplace_front(key, exec);
    cache.index[key] = cache.lru.begin();
    if (cache.lru.size() > kCapacity) {
      cudaDeviceSynchronize();  // the evicted graph may still run
      cudaGraphExecDestroy(cache.lru.back().second);
      cache.index.erase(cache.lru.back().first);
      cache.lru.pop_back();
    }
    hit = cache.index.find(key);
  } else {
    cache.lru.splice(cache.lru.begin(), cache.lru, hit->second);
  }
  const cudaError_t err = cudaGraphLaunch(hit->second->second, stream);
  if (err != cudaSuccess) return std::string("cudaGraphLaunch: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace alternating
}  // namespace flashrnn
