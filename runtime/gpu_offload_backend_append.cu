// GPU offload store: appends (bulk segments through the staging, or rows into the mapped
// pool), copy-on-write page copies and page reads back to the host.
#include "runtime/gpu_offload_backend_impl.cuh"

namespace twl {
namespace offload_store {

absl::Status GpuOffloadBackend::Append(const AppendView& tokens, DType dtype, MemSpace space,
                                       void* stream) {
  if (tokens.num_tokens < 0) return absl::InvalidArgumentError("append: num_tokens < 0");
  if (tokens.num_tokens == 0) return absl::OkStatus();
  if (!tokens.k || !tokens.v || !tokens.page_id || !tokens.slot) {
    return absl::InvalidArgumentError("append: null k, v, page_id or slot");
  }
  if (!IsValidDType(dtype)) return absl::InvalidArgumentError("append: unknown dtype");
  if (space != MemSpace::kHost && space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("append: unknown memory space");
  }
  TWL_RETURN_IF_ERROR(CheckPages(tokens.page_id, tokens.num_tokens, "append"));
  for (int32_t i = 0; i < tokens.num_tokens; ++i) {
    if (tokens.slot[i] < 0 || tokens.slot[i] >= g_.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "append: row %d of token %d outside [0, %d)", tokens.slot[i], i, g_.page_size));
    }
  }
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  cudaStream_t a = stream ? AsStream(stream) : append_stream_;
  // Chained after the previous append (and its cache mirror): they share the staging and the
  // descriptor buffer, and CopyPage/ReadPage/Decode wait for the last one only. A page freed
  // and reused since the last step may still be read by it: wait for that step too. Both
  // waits are on the device; the host goes on.
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaStreamWaitEvent(a, ev_step_done_, 0));
  if (disk_) return AppendWithDisk(tokens, dtype, space, a);
  // The bulk path needs every page written in one run of consecutive rows (how the Runtime
  // appends, batches included); anything else takes the per-token path.
  if (PlanAppendSegments(tokens.page_id, tokens.slot, tokens.num_tokens, &segs_) &&
      g_.head_dim % 8 == 0) {
    return AppendSegments(tokens, dtype, space, a);
  }
  // Host input is staged through pinned memory in chunks; device input goes in one launch.
  const int32_t chunk = space == MemSpace::kHost ? kAppendChunkTokens : tokens.num_tokens;
  const int64_t row_bytes = int64_t(g_.num_kv_heads) * g_.head_dim * int64_t(DTypeBytes(dtype));
  for (int32_t t0 = 0; t0 < tokens.num_tokens; t0 += chunk) {
    const AppendView part =
        TokenSlice(tokens, t0, std::min(chunk, tokens.num_tokens - t0), row_bytes);
    TWL_RETURN_IF_ERROR(AppendChunk(part, dtype, space, a));
  }
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::AppendSegments(const AppendView& tokens, DType dtype,
                                               MemSpace space, cudaStream_t s) {
  const int32_t n = tokens.num_tokens;
  const int64_t row_bytes = int64_t(g_.num_kv_heads) * g_.head_dim * int64_t(DTypeBytes(dtype));
  // Host input goes up in chunks of tokens (each chunk re-planned: a page split across two
  // chunks becomes two segments, the second merging its bounds with the first's, which the
  // stream has written by then).
  const bool host = space == MemSpace::kHost;
  const int32_t chunk_tokens = host ? kAppendChunkTokens : n;
  struct Run {  // one copy-engine transfer: pages [page, page + count) from stage [stage, ...)
    int32_t stage, page, count;
  };
  struct Round {
    int32_t seg_begin, seg_count;  // into the call's descriptor array
    std::vector<Run> runs;
  };
  struct Chunk {
    int32_t t0, tokens;
    std::vector<Round> rounds;
  };
  std::vector<Chunk> chunks;
  std::vector<AppendSegment> all;  // every chunk's segments, in launch order
  all.reserve(segs_.size() + size_t(n / std::max(chunk_tokens, 1)) + 1);
  std::vector<AppendSegment> plan, direct, staged;
  int64_t direct_segments = 0;
  for (int32_t t0 = 0; t0 < n; t0 += chunk_tokens) {
    Chunk ch;
    ch.t0 = t0;
    ch.tokens = std::min(chunk_tokens, n - t0);
    if (host) {
      PlanAppendSegments(tokens.page_id + t0, tokens.slot + t0, ch.tokens, &plan);
    } else {
      plan.swap(segs_);
    }
    // Whole pages go through the staging when enough of them make the copy engine pay.
    direct.clear();
    staged.clear();
    for (const AppendSegment& sg : plan) {
      const bool whole = sg.row_begin == 0 && sg.row_end == g_.page_size;
      (whole && append_path_ == AppendPath::kCopyEngine ? staged : direct).push_back(sg);
    }
    if (int64_t(staged.size()) * page_bytes_ < kMinCopyEngineBytes) {
      direct.insert(direct.end(), staged.begin(), staged.end());
      staged.clear();
    }
    // Sorted by page id, consecutive ids become one transfer (a fresh pool hands out
    // consecutive pages; after frees, LIFO reuse hands them out in reverse).
    std::sort(staged.begin(), staged.end(),
              [](const AppendSegment& x, const AppendSegment& y) { return x.page < y.page; });
    direct_segments += int64_t(direct.size());
    size_t next_staged = 0;
    do {
      Round r;
      r.seg_begin = int32_t(all.size());
      if (ch.rounds.empty()) all.insert(all.end(), direct.begin(), direct.end());
      const size_t take = std::min<size_t>(size_t(half_pages_), staged.size() - next_staged);
      for (size_t j = 0; j < take; ++j) {
        AppendSegment sg = staged[next_staged + j];
        sg.stage = int32_t(j);
        if (!r.runs.empty() && r.runs.back().page + r.runs.back().count == sg.page) {
          ++r.runs.back().count;
        } else {
          r.runs.push_back(Run{sg.stage, sg.page, 1});
        }
        all.push_back(sg);
      }
      next_staged += take;
      r.seg_count = int32_t(all.size()) - r.seg_begin;
      ch.rounds.push_back(std::move(r));
    } while (next_staged < staged.size());
    chunks.push_back(std::move(ch));
  }
  if (all.size() > size_t(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("append: too many segments");
  }

  // A decode step's append (device rows, a few partial pages, nothing staged, no reader of
  // the descriptors but the kernel): the segments travel as the kernel's parameter, so the
  // stream runs no upload before it.
  const bool mirror = direct_segments > 0 && fetch_stage_->appends_need_mirror();
  if (!host && chunks.size() == 1 && chunks[0].rounds.size() == 1 &&
      chunks[0].rounds[0].runs.empty() && all.size() <= size_t(kInlineAppendSegments) &&
      !qk_.meta && !mirror) {
    const FpKvView pool_view{static_cast<fp16_t*>(pool_->device_base()), nullptr};
    const DeviceRowCache* insert = append_insert_ ? fetch_stage_->append_insert() : nullptr;
    TWL_RETURN_IF_ERROR(LaunchAppendSegmentsInline(g_, all.data(), int32_t(all.size()),
                                                   tokens.k, tokens.v, InputType(dtype),
                                                   pool_view, nullptr, qk_, insert, s));
    TWL_CUDA(cudaEventRecord(ev_appended_, s));
    TWL_CUDA(cudaEventRecord(ev_append_done_, s));
    return absl::OkStatus();
  }
  // Descriptors up in one copy, through the next pinned ring buffer. Waiting for its event
  // blocks the host only when kDescRing appends are still queued ahead of this one.
  const size_t desc_bytes = all.size() * sizeof(AppendSegment);
  const bool small_host =
      host && chunks.size() == 1 && 2 * int64_t(n) * row_bytes <= kSmallHostBytes;
  const size_t in_bytes = size_t(n * row_bytes);  // K (or V) of a small host input
  const size_t in_off = (desc_bytes + 255) / 256 * 256;
  const int32_t ring = desc_next_;
  desc_next_ = (desc_next_ + 1) % kDescRing;
  TWL_CUDA(cudaEventSynchronize(ev_desc_[ring]));  // returns at once when done
  TWL_RETURN_IF_ERROR(h_desc_[ring].Reserve(small_host ? in_off + 2 * in_bytes : desc_bytes));
  TWL_RETURN_IF_ERROR(Grow(d_segs_, desc_bytes));  // grows only for a larger call than any before
  if (host) TWL_RETURN_IF_ERROR(Grow(d_in_, size_t(2 * int64_t(kAppendChunkTokens) * row_bytes)));
  char* ring_buf = h_desc_[ring].data();
  std::memcpy(ring_buf, all.data(), desc_bytes);
  TWL_CUDA(cudaMemcpyAsync(d_segs_.get(), ring_buf, desc_bytes, cudaMemcpyHostToDevice, s));
  if (small_host) {
    std::memcpy(ring_buf + in_off, tokens.k, in_bytes);
    std::memcpy(ring_buf + in_off + in_bytes, tokens.v, in_bytes);
    TWL_CUDA(cudaMemcpyAsync(d_in_.get(), ring_buf + in_off, 2 * in_bytes,
                                 cudaMemcpyHostToDevice, s));
  }
  TWL_CUDA(cudaEventRecord(ev_desc_[ring], s));

  const auto* d_all = d_segs_.as<AppendSegment>();
  bool copied = false;
  const FpKvView pool_view{static_cast<fp16_t*>(pool_->device_base()), nullptr};
  auto* pool_host = static_cast<char*>(pool_->base());
  for (const Chunk& ch : chunks) {
    const void* k = reinterpret_cast<const char*>(tokens.k) + ch.t0 * row_bytes;
    const void* v = reinterpret_cast<const char*>(tokens.v) + ch.t0 * row_bytes;
    if (small_host) {
      k = d_in_.get();
      v = d_in_.as<char>() + in_bytes;
    } else if (host) {
      // Host rows -> pinned (double-buffered, each guarded by the event of its upload) ->
      // d_in_, which the stream frees for the next chunk once this chunk's kernel has run.
      const size_t bytes = size_t(ch.tokens * row_bytes);
      const int32_t b = in_next_;
      in_next_ ^= 1;
      TWL_CUDA(cudaEventSynchronize(ev_in_[b]));
      TWL_RETURN_IF_ERROR(h_in_[b].Reserve(2 * bytes));
      std::memcpy(h_in_[b].data(), k, bytes);
      std::memcpy(h_in_[b].data() + bytes, v, bytes);
      TWL_CUDA(cudaMemcpyAsync(d_in_.get(), h_in_[b].data(), 2 * bytes,
                                   cudaMemcpyHostToDevice, s));
      TWL_CUDA(cudaEventRecord(ev_in_[b], s));
      k = d_in_.get();
      v = d_in_.as<char>() + bytes;
    }
    for (const Round& r : ch.rounds) {
      // Rounds alternate between the staging halves: the kernel of round i + 1 runs while
      // the copy engine still drains round i's half (on copy_stream_); round i + 2 waits for
      // that drain before it overwrites the half.
      const int32_t half = half_next_;
      char* stage = stage_.as<char>() + int64_t(half) * half_pages_ * page_bytes_;
      if (!r.runs.empty()) TWL_CUDA(cudaStreamWaitEvent(s, ev_half_[half], 0));
      TWL_RETURN_IF_ERROR(LaunchAppendSegments(g_, d_all + r.seg_begin, r.seg_count, k, v,
                                          InputType(dtype), pool_view,
                                          reinterpret_cast<fp16_t*>(stage), qk_, s));
      if (qk_.meta) {
        TWL_RETURN_IF_ERROR(meta_sel_->AppendSegmentsMetadataOnDevice(
            g_, d_all + r.seg_begin, r.seg_count, pool_view,
            reinterpret_cast<const fp16_t*>(stage), qk_, s));
      }
      if (r.runs.empty()) continue;
      TWL_CUDA(cudaEventRecord(ev_filled_, s));
      TWL_CUDA(cudaStreamWaitEvent(copy_stream_, ev_filled_, 0));
      for (const Run& run : r.runs) {
        TWL_CUDA(cudaMemcpyAsync(pool_host + int64_t(run.page) * page_bytes_,
                                     stage + int64_t(run.stage) * page_bytes_,
                                     size_t(int64_t(run.count) * page_bytes_),
                                     cudaMemcpyDeviceToHost, copy_stream_));
      }
      TWL_CUDA(cudaEventRecord(ev_half_[half], copy_stream_));
      half_next_ ^= 1;
      copied = true;
    }
  }
  // The caller's stream reaches "appended" only once every staged page is in the pool
  // (copy_stream_ runs its copies in order, so its last event covers them all).
  if (copied) TWL_CUDA(cudaStreamWaitEvent(s, ev_half_[half_next_ ^ 1], 0));
  TWL_CUDA(cudaEventRecord(ev_appended_, s));
  if (mirror) {
    // Cache coherence on the fetch stream, where every other cache mutation runs. Whole new
    // pages cannot be resident (freed pages were invalidated before), so only calls with
    // partial pages need it, and only under a cache that may hold a stale copy (the block
    // cache's partial blocks; not the row cache).
    TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
    TWL_RETURN_IF_ERROR(fetch_stage_->MirrorSegments(
        static_cast<const fp16_t*>(pool_->device_base()), d_all, int32_t(all.size()),
        fetch_stream_));
    TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  } else {
    TWL_CUDA(cudaEventRecord(ev_append_done_, s));
  }
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::AppendChunk(const AppendView& in, DType dtype, MemSpace space,
                                            cudaStream_t a) {
  const int32_t n = in.num_tokens;
  PlanAppendPages(in.page_id, in.slot, n, &plan_pages_, &plan_rows_);
  const int32_t np = int32_t(plan_pages_.size());
  const size_t kv_bytes =
      space == MemSpace::kHost ? size_t(n) * g_.num_kv_heads * g_.head_dim * DTypeBytes(dtype)
                               : 0;
  // Layout of the staging: page_id[n], slot[n], pages[np], rows[np], then k, v (host input).
  const size_t idx_bytes = (size_t(2) * n + 2 * size_t(np)) * 4;
  const size_t kv_off = (idx_bytes + 255) / 256 * 256;
  const size_t total = kv_off + 2 * kv_bytes;
  TWL_CUDA(cudaEventSynchronize(ev_append_staged_));  // previous chunk's upload is done
  TWL_RETURN_IF_ERROR(h_append_.Reserve(total));
  TWL_RETURN_IF_ERROR(Grow(d_append_, total));
  char* h = h_append_.as<char>();
  std::memcpy(h, in.page_id, size_t(n) * 4);
  std::memcpy(h + size_t(n) * 4, in.slot, size_t(n) * 4);
  std::memcpy(h + size_t(2 * n) * 4, plan_pages_.data(), size_t(np) * 4);
  std::memcpy(h + size_t(2 * n + np) * 4, plan_rows_.data(), size_t(np) * 4);
  if (kv_bytes) {
    std::memcpy(h + kv_off, in.k, kv_bytes);
    std::memcpy(h + kv_off + kv_bytes, in.v, kv_bytes);
  }
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaMemcpyAsync(d_append_.get(), h, total, cudaMemcpyHostToDevice, a));
  TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
  char* d = d_append_.as<char>();
  AppendView dev;
  dev.num_tokens = n;
  dev.page_id = reinterpret_cast<const int32_t*>(d);
  dev.slot = reinterpret_cast<const int32_t*>(d + size_t(n) * 4);
  dev.k = kv_bytes ? reinterpret_cast<const fp16_t*>(d + kv_off) : in.k;
  dev.v = kv_bytes ? reinterpret_cast<const fp16_t*>(d + kv_off + kv_bytes) : in.v;
  AppendPagePlan plan;
  plan.d_page = reinterpret_cast<const int32_t*>(d + size_t(2 * n) * 4);
  plan.d_rows = reinterpret_cast<const int32_t*>(d + size_t(2 * n + np) * 4);
  plan.num_pages = np;
  // FP16 rows land in the mapped host pool (identity addressed, or through the pool map with
  // a disk tier), INT4 K + bounds on the GPU; then the selector's own metadata.
  const FpKvView pool_view = PoolView();
  TWL_RETURN_IF_ERROR(LaunchAppend(g_, dev, InputType(dtype), plan, pool_view, qk_, a));
  if (qk_.meta) {
    TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, pool_view, qk_, a));
  }
  TWL_CUDA(cudaEventRecord(ev_appended_, a));
  if (!disk_ && !fetch_stage_->appends_need_mirror()) {  // nothing stale to mirror (see there)
    TWL_CUDA(cudaEventRecord(ev_append_done_, a));
    TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
    return absl::OkStatus();
  }
  // Cache coherence on the fetch stream, where every other cache mutation runs.
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
  if (disk_) {
    // The mirror kernels read the pool identity addressed: drop the pages' cached blocks
    // instead (the next step fetches them again from the pool).
    TWL_RETURN_IF_ERROR(fetch_stage_->InvalidatePages(plan.d_page, np, fetch_stream_));
  } else {
    TWL_RETURN_IF_ERROR(fetch_stage_->MirrorTokens(
        static_cast<const fp16_t*>(pool_->device_base()), dev.page_id, dev.slot, n,
        fetch_stream_));
  }
  TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  // The staging (indices read by the mirror) is reused only after the mirror has run.
  TWL_CUDA(cudaEventRecord(ev_append_staged_, fetch_stream_));
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) {
  const int32_t pages[2] = {src_page, dst_page};
  TWL_RETURN_IF_ERROR(CheckPages(pages, 2, "copy page"));
  if (rows < 0 || rows > g_.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat("copy page: rows %d", rows));
  }
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  // Rows of src may still be in flight from an append (on whatever stream; appends are
  // chained, so the last one's event covers all), and a step issued before dst_page was
  // last freed may still read it.
  TWL_CUDA(cudaEventSynchronize(ev_append_done_));
  TWL_CUDA(cudaEventSynchronize(ev_step_done_));
  if (disk_) {
    // Both pages' blocks in host slots (src read back if it is on disk), dst's disk copies
    // dropped.
    const int32_t both[2] = {src_page, dst_page};
    const int32_t n = src_page == dst_page ? 1 : 2;
    std::vector<int32_t> blocks, dst_blocks;
    BlocksOfPages(absl::MakeConstSpan(both, size_t(n)), &blocks);
    BlocksOfPages({dst_page}, &dst_blocks);
    TWL_RETURN_IF_ERROR(PrefixStatus(disk_->Reserve(blocks, nullptr), "copy-on-write: "));
    TWL_RETURN_IF_ERROR(disk_->MarkDirty(dst_blocks));
    TWL_RETURN_IF_ERROR(UploadPoolMap(append_stream_));
  }
  const int32_t H = g_.num_kv_heads;
  const int64_t row_elems = g_.head_dim;
  for (int32_t h = 0; h < H; ++h) {
    const int64_t sb = int64_t(src_page) * H + h, db = int64_t(dst_page) * H + h;
    fp16_t* s = HostBlock(sb);
    fp16_t* dd = HostBlock(db);
    std::memcpy(dd, s, size_t(rows * row_elems) * 2);  // K rows
    std::memcpy(dd + g_.page_size * row_elems, s + g_.page_size * row_elems,
                size_t(rows * row_elems) * 2);  // V rows
  }
  if (rows == 0) return absl::OkStatus();
  cudaStream_t a = append_stream_;
  // Codes, scale and zero of the page's blocks are contiguous per page (block-major).
  const int64_t sb0 = int64_t(src_page) * H, db0 = int64_t(dst_page) * H;
  if (qk_.codes) {
    TWL_CUDA(cudaMemcpyAsync(qk_.codes + db0 * g_.CodeBlockBytes(),
                                 qk_.codes + sb0 * g_.CodeBlockBytes(),
                                 size_t(H * g_.CodeBlockBytes()), cudaMemcpyDeviceToDevice, a));
  }
  for (fp16_t* arr : {qk_.scale, qk_.zero}) {
    if (!arr) continue;
    TWL_CUDA(cudaMemcpyAsync(arr + db0 * g_.page_size, arr + sb0 * g_.page_size,
                                 size_t(H) * g_.page_size * 2, cudaMemcpyDeviceToDevice, a));
  }
  // Page bounds over the copied rows, from the FP16 K now in the host pool.
  TWL_CUDA(cudaEventSynchronize(ev_append_staged_));
  TWL_RETURN_IF_ERROR(h_append_.Reserve(16));
  TWL_RETURN_IF_ERROR(Grow(d_append_, 16));
  int32_t* h = h_append_.as<int32_t>();
  h[0] = dst_page;
  h[1] = rows;
  TWL_CUDA(cudaMemcpyAsync(d_append_.get(), h, 8, cudaMemcpyHostToDevice, a));
  AppendPagePlan plan{d_append_.as<int32_t>(), d_append_.as<int32_t>() + 1, 1};
  const FpKvView pool_view = PoolView();
  TWL_RETURN_IF_ERROR(LaunchRecomputeMinMax(g_, plan, pool_view, qk_, a));
  if (qk_.meta) TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, pool_view, qk_, a));
  TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
  TWL_CUDA(cudaEventRecord(ev_appended_, a));
  // A reused page id must not hit stale cache slots.
  pending_release_.push_back(dst_page);
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
  return ApplyPendingReleases();
}

absl::Status GpuOffloadBackend::ReadPage(int32_t page, int32_t rows, fp16_t* k,
                                         fp16_t* v) const {
  TWL_RETURN_IF_ERROR(CheckPages(&page, 1, "read page"));
  if (rows < 0 || rows > g_.page_size || !k || !v) {
    return absl::InvalidArgumentError("read page: bad rows or null output");
  }
  TWL_CUDA(cudaEventSynchronize(ev_append_done_));  // appended rows have landed
  if (disk_) return disk_->ReadRows(page, rows, k, v);  // from its slot or its disk record
  const int32_t H = g_.num_kv_heads, d = g_.head_dim;
  for (int32_t h = 0; h < H; ++h) {
    const auto* b = static_cast<const fp16_t*>(pool_->Block(int64_t(page) * H + h));
    for (int32_t r = 0; r < rows; ++r) {
      std::memcpy(k + (int64_t(r) * H + h) * d, b + int64_t(r) * d, size_t(d) * 2);
      std::memcpy(v + (int64_t(r) * H + h) * d, b + int64_t(g_.page_size + r) * d,
                  size_t(d) * 2);
    }
  }
  return absl::OkStatus();
}

}  // namespace offload_store
}  // namespace twl
