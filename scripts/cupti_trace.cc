// A kernel timeline for machines without Nsight Systems: a CUDA injection library
// (CUDA_INJECTION64_PATH=libcupti_trace.so) that records every kernel, memcpy and memset
// between cudaProfilerStart and cudaProfilerStop (twl_serve_bench --profile_last_step) with
// its start and end on the GPU clock, its stream and, for graph nodes, its graph, and writes
// them as CSV to $TWL_TRACE_OUT at exit. Kernels of a CUDA graph are recorded one by one,
// which shows what runs beside what and where the gaps are.
//   g++ -O2 -shared -fPIC -o libcupti_trace.so scripts/cupti_trace.cc \
//       -I/usr/local/cuda/include -L/usr/local/cuda/lib -lcupti
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  const char* kind;
  std::string name;
  uint64_t start, end;
  uint32_t stream;
  uint32_t graph;
  int32_t grid, block;
};

std::mutex mu;
std::vector<Record> records;
bool active = false;

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(8) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
        records.push_back(Record{"kernel", k->name ? k->name : "?", k->start, k->end,
                                 k->streamId, k->graphId,
                                 int32_t(k->gridX * k->gridY * k->gridZ),
                                 int32_t(k->blockX * k->blockY * k->blockZ)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
        records.push_back(Record{"memcpy", std::to_string(m->bytes) + " B kind " +
                                               std::to_string(int(m->copyKind)),
                                 m->start, m->end, m->streamId, m->graphId, 0, 0});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
        records.push_back(Record{"memset", std::to_string(m->bytes) + " B", m->start, m->end,
                                 m->streamId, m->graphId, 0, 0});
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
}

void SetActive(bool on) {
  if (on == active) return;
  active = on;
  const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                      CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};
  for (CUpti_ActivityKind k : kinds) {
    if (on) {
      cuptiActivityEnable(k);
    } else {
      cuptiActivityFlushAll(1);
      cuptiActivityDisable(k);
    }
  }
}

void CUPTIAPI OnApi(void*, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                    const void* data) {
  const auto* info = static_cast<const CUpti_CallbackData*>(data);
  const bool start = (domain == CUPTI_CB_DOMAIN_DRIVER_API &&
                      cbid == CUPTI_DRIVER_TRACE_CBID_cuProfilerStart) ||
                     (domain == CUPTI_CB_DOMAIN_RUNTIME_API &&
                      cbid == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000);
  const bool stop = (domain == CUPTI_CB_DOMAIN_DRIVER_API &&
                     cbid == CUPTI_DRIVER_TRACE_CBID_cuProfilerStop) ||
                    (domain == CUPTI_CB_DOMAIN_RUNTIME_API &&
                     cbid == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000);
  if (start && info->callbackSite == CUPTI_API_EXIT) SetActive(true);
  if (stop && info->callbackSite == CUPTI_API_ENTER) SetActive(false);
}

void WriteOut() {
  SetActive(false);
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("TWL_TRACE_OUT");
  FILE* f = std::fopen(path ? path : "cupti_trace.csv", "w");
  if (f == nullptr) return;
  std::fprintf(f, "kind,start_ns,end_ns,stream,graph,grid,block,name\n");
  std::lock_guard<std::mutex> lock(mu);
  for (const Record& r : records) {
    std::string name = r.name;
    for (char& c : name) {
      if (c == ',') c = ';';
    }
    std::fprintf(f, "%s,%llu,%llu,%u,%u,%d,%d,%s\n", r.kind, (unsigned long long)r.start,
                 (unsigned long long)r.end, r.stream, r.graph, r.grid, r.block, name.c_str());
  }
  std::fclose(f);
}

}  // namespace

extern "C" int InitializeInjection(void) {
  cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted);
  CUpti_SubscriberHandle sub;
  if (cuptiSubscribe(&sub, reinterpret_cast<CUpti_CallbackFunc>(OnApi), nullptr) ==
      CUPTI_SUCCESS) {
    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API,
                        CUPTI_DRIVER_TRACE_CBID_cuProfilerStart);
    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API,
                        CUPTI_DRIVER_TRACE_CBID_cuProfilerStop);
    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
                        CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000);
    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
                        CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000);
  }
  if (std::getenv("TWL_TRACE_ALL") != nullptr) SetActive(true);
  std::atexit(WriteOut);
  return 1;
}
