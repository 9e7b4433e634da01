// TelemetryRing::CopyIn: the device parts of a step's figures land back to back in the
// slot's pinned buffer, written by one kernel (pipeline/cuda/telemetry_ring.cuh). Fresh
// random words per run, part sizes that are not multiples of the kernel's block or grid
// (one word, a few, more than one grid-stride pass), an empty part in the middle; then the
// calls it must refuse before launching anything.
#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "pipeline/cuda/telemetry_ring.cuh"

namespace twl::testing {
namespace {

using Part = pipeline_cuda::TelemetryRing::Part;

TEST(TelemetryRingGpu, CopyInLandsEveryPartBackToBack) {
  TWL_SKIP_WITHOUT_GPU();
  pipeline_cuda::TelemetryRing ring;
  TWL_ASSERT_OK(ring.Init(0));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  std::mt19937 rng(std::random_device{}());
  // 9000 words: more than the kernel's 32 x 256 threads, so the grid strides twice.
  const std::vector<size_t> words = {1, 37, 0, 9000, 5};
  std::vector<std::vector<uint32_t>> host(words.size());
  std::vector<gpu::DeviceBuffer> dev;
  std::vector<Part> parts;
  std::vector<uint32_t> expect;
  for (size_t k = 0; k < words.size(); ++k) {
    host[k].resize(words[k]);
    for (uint32_t& w : host[k]) w = uint32_t(rng());
    expect.insert(expect.end(), host[k].begin(), host[k].end());
    dev.push_back(Upload(words[k] ? host[k] : std::vector<uint32_t>{0u}));
    parts.push_back(Part{dev.back().get(), words[k] * 4});
  }
  for (int32_t slot : {0, pipeline_cuda::TelemetryRing::kSlots - 1}) {
    SCOPED_TRACE(slot);
    TWL_ASSERT_OK(ring.CopyIn(slot, parts, stream));
    TWL_ASSERT_OK(ring.MarkLanded(slot, stream));
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto* got = reinterpret_cast<const uint32_t*>(ring.host(slot).data());
    ASSERT_EQ(std::vector<uint32_t>(got, got + expect.size()), expect);
  }
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST(TelemetryRingGpu, CopyInRefusesPartsItCannotCopy) {
  TWL_SKIP_WITHOUT_GPU();
  pipeline_cuda::TelemetryRing ring;
  TWL_ASSERT_OK(ring.Init(0));
  gpu::DeviceBuffer buf = Upload(std::vector<uint32_t>(16, 7u));
  // Not whole words.
  EXPECT_FALSE(ring.CopyIn(0, {Part{buf.get(), 6}}, nullptr).ok());
  // No source (a kernel reading it would fault the context).
  EXPECT_FALSE(ring.CopyIn(0, {Part{nullptr, 8}}, nullptr).ok());
  // More parts than the kernel's parameter holds.
  std::vector<Part> many(pipeline_cuda::TelemetryRing::kMaxParts + 1, Part{buf.get(), 4});
  EXPECT_FALSE(ring.CopyIn(0, many, nullptr).ok());
  // None of them launched anything: the context is healthy and a valid copy still works.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  TWL_ASSERT_OK(ring.CopyIn(0, {Part{buf.get(), 64}}, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto* got = reinterpret_cast<const uint32_t*>(ring.host(0).data());
  EXPECT_EQ(std::vector<uint32_t>(got, got + 16), std::vector<uint32_t>(16, 7u));
}

}  // namespace
}  // namespace twl::testing
