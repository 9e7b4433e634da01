#include "gpu/cuda/kernel_attrs.cuh"

#include <map>
#include <mutex>
#include <tuple>

namespace twl::cuda {
namespace {

using Key = std::tuple<const void*, int, int, size_t>;  // kernel, device, kind/threads, value

struct Memo {
  std::mutex mu;
  std::map<Key, std::pair<cudaError_t, int>> done;
};

Memo& TheMemo() {
  static Memo* m = new Memo;  // never destroyed: kernels may launch during static teardown
  return *m;
}

template <class Ask>
cudaError_t Remembered(const Key& key, int* value, Ask&& ask) {
  Memo& m = TheMemo();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    auto it = m.done.find(key);
    if (it != m.done.end()) {
      if (value) *value = it->second.second;
      return it->second.first;
    }
  }
  int v = 0;
  const cudaError_t e = ask(&v);
  if (e != cudaSuccess) return e;  // not remembered: a later call asks again
  std::lock_guard<std::mutex> lock(m.mu);
  m.done.emplace(key, std::make_pair(e, v));
  if (value) *value = v;
  return e;
}

}  // namespace

cudaError_t SetMaxDynamicSmemOnce(const void* kernel, int bytes) {
  int dev = 0;
  if (const cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  return Remembered(Key{kernel, dev, -1, size_t(bytes)}, nullptr, [&](int*) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  });
}

cudaError_t MaxActiveBlocksPerSm(int* blocks, const void* kernel, int threads, size_t smem) {
  int dev = 0;
  if (const cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  return Remembered(Key{kernel, dev, threads, smem}, blocks, [&](int* v) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(v, kernel, threads, smem);
  });
}

}  // namespace twl::cuda
