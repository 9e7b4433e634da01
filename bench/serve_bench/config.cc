// twl_serve_bench: one configuration (see serve_bench.h).
#include "serve_bench/serve_bench.h"

namespace twl::serve_bench {

void Config::CreateRuntime(int64_t max_tokens) {
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = L();
  c.num_q_heads = shape_.q_heads;
  c.num_kv_heads = shape_.kv_heads;
  c.head_dim = D();
  c.backend = method_.backend;
  c.selector_budget_tokens = method_.budget_tokens;
  c.selector = method_.selector;
  c.dense_layers = method_.dense ? L() : 0;
  c.top_p = float(absl::GetFlag(FLAGS_top_p));
  c.k_scheme = absl::GetFlag(FLAGS_k_scheme);
  c.cache_rows = method_.cache_rows >= 0 ? method_.cache_rows : absl::GetFlag(FLAGS_cache_rows);
  c.collect_telemetry = 1;
  const int64_t page = kPageTokens;
  const int64_t kv_bytes_all = max_tokens * L() * RowElems() * 2 * 2;
  // Pool: every sequence's pages in every layer, plus a page of slack per (sequence, layer).
  c.host_pool_bytes = kv_bytes_all + int64_t(batch_ + 1) * L() * page * RowElems() * 4 +
                      (int64_t(64) << 20);
  if (method_.disk) {
    // The same page capacity, most of it on disk.
    const double gib = absl::GetFlag(FLAGS_disk_host_pool_gib);
    const int64_t all = c.host_pool_bytes;
    c.host_pool_bytes = gib > 0 ? int64_t(gib * double(int64_t(1) << 30)) : kv_bytes_all / 4;
    disk_path_ = absl::GetFlag(FLAGS_disk_dir);
    c.disk_path = disk_path_.c_str();
    c.disk_bytes = all;
  }
  if (method_.backend == TWL_BACKEND_GPU_OFFLOAD) {
    c.gpu_cache_bytes = std::max<int64_t>(int64_t(absl::GetFlag(FLAGS_cache_frac) * kv_bytes_all),
                                          int64_t(1) << 20);
  }
  Check(twl_runtime_create(&c, &rt_), nullptr, "twl_runtime_create");
}

void Config::Prefill(Running* r) {
  const int32_t chunk = std::max(16, absl::GetFlag(FLAGS_prefill_chunk));
  const size_t bytes = size_t(chunk) * size_t(RowElems()) * 2;
  chunk_k_.Resize(bytes, gpu_);
  chunk_v_.Resize(bytes, gpu_);
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  for (int32_t l = 0; l < L(); ++l) {
    const SynthSpec spec = Spec(l);
    for (int32_t t0 = 0; t0 < r->target; t0 += chunk) {
      const int32_t n = std::min(chunk, r->target - t0);
      if (gpu_) {
        CheckOk(LaunchSynthKv(spec, r->synth_id, t0, n, r->target, chunk_k_.as<fp16_t>(),
                              chunk_v_.as<fp16_t>(), stream_),
                "synth kv");
        CheckOk(gpu::StreamSync(stream_), "synth sync");
      } else {
        SynthKvHost(spec, r->synth_id, t0, n, r->target, chunk_k_.as<fp16_t>(),
                    chunk_v_.as<fp16_t>());
      }
      // One batched append on the engine's stream, timed to its completion.
      const auto t_start = Clock::now();
      Check(twl_append_batch(rt_, l, &r->id, &n, 1, chunk_k_.as<void>(), chunk_v_.as<void>(),
                             TWL_DTYPE_FP16, space, stream_),
            rt_, "prefill append");
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "prefill sync");
      prefill_ms_ += MsSince(t_start);
      prefill_bytes_ += int64_t(n) * RowElems() * 4;
    }
  }
  r->len = r->target;
}

void Config::StartSequence(Running* r) {
  Check(twl_sequence_create(rt_, &r->id), rt_, "twl_sequence_create");
  r->synth_id = next_synth_id_++;
  r->target = DrawLength();
  Prefill(r);
}

// Inputs of `steps` steps starting at `first_step` for the current batch, made before the
// timed loop so that the loop holds only the engine's calls: q [step][layer][B][Hq][D],
// new K/V [step][layer][B][Hkv][D].
void Config::GenerateSegment(int32_t first_step, int32_t steps) {
  const int32_t B = batch_, Hq = shape_.q_heads;
  const size_t q_elems = size_t(steps) * L() * B * Hq * D();
  const size_t kv_elems = size_t(steps) * L() * B * size_t(RowElems());
  seg_q_.Resize(q_elems * 2, gpu_);
  seg_k_.Resize(kv_elems * 2, gpu_);
  seg_v_.Resize(kv_elems * 2, gpu_);
  out_.Resize(size_t(B) * Hq * D() * 2, gpu_);
  synth_ids_.resize(size_t(B));
  const int32_t drift = std::max(1, absl::GetFlag(FLAGS_drift_every));
  for (int32_t st = 0; st < steps; ++st) {
    const int32_t step = first_step + st;
    for (int32_t l = 0; l < L(); ++l) {
      const SynthSpec spec = Spec(l);
      const size_t base = (size_t(st) * L() + l) * B;
      for (int32_t b = 0; b < B; ++b) {
        const Running& r = seqs_[size_t(b)];
        synth_ids_[size_t(b)] = r.synth_id;
        const int32_t pos = r.len + st;  // the new token's position
        fp16_t* k = seg_k_.as<fp16_t>() + (base + b) * RowElems();
        fp16_t* v = seg_v_.as<fp16_t>() + (base + b) * RowElems();
        if (gpu_) {
          CheckOk(LaunchSynthKv(spec, r.synth_id, pos, 1, pos + 1, k, v, stream_), "synth kv");
        } else {
          SynthKvHost(spec, r.synth_id, pos, 1, pos + 1, k, v);
        }
      }
      // Drifting: the region each query looks at moves every `drift` steps (per sequence
      // offset, so sequences do not move together).
      const int32_t regions =
          spec.region_tokens > 0 ? std::max(1, absl::GetFlag(FLAGS_context) / spec.region_tokens)
                                 : 1;
      fp16_t* q = seg_q_.as<fp16_t>() + base * Hq * D();
      for (int32_t b = 0; b < B; ++b) {
        const int32_t region = (step / drift + b) % regions;
        if (gpu_) {
          synth_ids_dev_.Resize(4, true);
          CheckOk(gpu::CopyToDevice(synth_ids_dev_.as<void>(), &synth_ids_[size_t(b)], 4,
                                    nullptr),
                  "ids");
          CheckOk(LaunchSynthQueriesFor(spec, synth_ids_dev_.as<int32_t>(), 1, Hq, region,
                                        q + int64_t(b) * Hq * D(), nullptr),
                  "synth q");
          CheckOk(gpu::DeviceSync(), "synth q sync");
        } else {
          SynthQueriesHost(spec, &synth_ids_[size_t(b)], 1, Hq, region,
                           q + int64_t(b) * Hq * D());
        }
      }
    }
  }
  if (gpu_) CheckOk(gpu::DeviceSync(), "segment inputs");
}

void Config::StepGraph(int32_t seg_step, double* append_ms) {
  const int32_t B = batch_, Hq = shape_.q_heads;
  const auto ta = Clock::now();
  if (!reserved_) Check(twl_batch_reserve(rt_, batch_id_, stream_), rt_, "twl_batch_reserve");
  reserved_ = false;
  if (append_ms) *append_ms += MsSince(ta);
  // The engine's projections would write into the graph's buffers; here the step's rows of
  // every layer (contiguous in the segment) are copied, one copy each for K, V and q.
  const size_t base = size_t(seg_step) * L() * B;
  const size_t kv_bytes = size_t(L()) * B * RowElems() * 2;
  CheckOk(gpu::CopyOnDevice(graph_k_.as<void>(), seg_k_.as<fp16_t>() + base * RowElems(),
                            kv_bytes, stream_),
          "graph k");
  CheckOk(gpu::CopyOnDevice(graph_v_.as<void>(), seg_v_.as<fp16_t>() + base * RowElems(),
                            kv_bytes, stream_),
          "graph v");
  CheckOk(gpu::CopyOnDevice(graph_q_.as<void>(), seg_q_.as<fp16_t>() + base * Hq * D(),
                            size_t(L()) * B * Hq * D() * 2, stream_),
          "graph q");
  CheckOk(gpu::GraphLaunch(graphs_[0], stream_), "graph launch");
  for (Running& r : seqs_) ++r.len;
}

// One decode step over all layers: per layer, append every sequence's new token, then decode.
void Config::Step(int32_t seg_step, double* append_ms, bool poll_kept, bool sync_each) {
  if (method_.graph && !sync_each && absl::GetFlag(FLAGS_graph_appends)) {
    StepGraph(seg_step, append_ms);
    return;
  }
  const int32_t B = batch_, Hq = shape_.q_heads;
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  std::vector<float> ones(static_cast<size_t>(B), 1.0f);
  const std::vector<int32_t> counts(static_cast<size_t>(B), 1);
  for (int32_t l = 0; l < L(); ++l) {
    const size_t base = (size_t(seg_step) * L() + l) * B;
    const auto ta = Clock::now();
    // The new token of every sequence in one call, queued on the engine's stream.
    Check(twl_append_batch(rt_, l, ids.data(), counts.data(), B,
                           seg_k_.as<fp16_t>() + base * RowElems(),
                           seg_v_.as<fp16_t>() + base * RowElems(), TWL_DTYPE_FP16, space,
                           stream_),
          rt_, "twl_append_batch");
    if (append_ms) *append_ms += MsSince(ta);
    const fp16_t* q = seg_q_.as<fp16_t>() + base * Hq * D();
    if (method_.graph && !sync_each) {
      // The engine's q projection would write into the graph's buffer; here it is copied.
      const size_t q_bytes = size_t(B) * Hq * D() * 2;
      CheckOk(gpu::CopyOnDevice(graph_q_.as<char>() + size_t(l) * q_bytes, q, q_bytes, stream_),
              "graph q");
      CheckOk(gpu::GraphLaunch(graphs_[size_t(l)], stream_), "graph launch");
      continue;
    }
    if (method_.bound && !sync_each) {
      // An engine that binds its batch but does not capture: the bound call, eagerly.
      Check(twl_decode_batch(rt_, batch_id_, l, q, out_.as<void>(), TWL_DTYPE_FP16, stream_),
            rt_, "twl_decode_batch");
      continue;
    }
    Check(twl_decode(rt_, l, ids.data(), B, q, out_.as<void>(), space,
                     method_.quest_alone ? ones.data() : nullptr, stream_),
          rt_, "twl_decode");
    if (sync_each) {
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "telemetry sync");
      Poll(/*telemetry=*/true);
    } else if (poll_kept) {
      Poll(/*telemetry=*/false);
    }
  }
  for (Running& r : seqs_) ++r.len;
}

void Config::Poll(bool telemetry) {
  twl_step_stats st{};
  st.struct_size = sizeof(st);
  if (twl_runtime_last_step(rt_, &st) != TWL_OK || st.num_seqs <= 0 ||
      st.step == kept_seen_step_) {
    return;
  }
  kept_seen_step_ = st.step;
  if (!telemetry) {
    auto& acc = kept_by_layer_[st.layer];
    acc.first += st.mean_kept_tokens_kv;
    ++acc.second;
    return;
  }
  tele_by_layer_[st.layer].Add(st);
}

void Config::BindBatch() {
  const int32_t B = batch_, Hq = shape_.q_heads;
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  Check(twl_batch_create(rt_, ids.data(), B, bound_room_, &batch_id_), rt_, "twl_batch_create");
  if (!method_.graph) return;
  const size_t q_bytes = size_t(B) * Hq * D() * 2;
  graph_q_.Resize(q_bytes * L(), true);
  graph_out_.Resize(q_bytes, true);
  CheckOk(gpu::Memset(graph_q_.as<void>(), 0, q_bytes * L(), stream_), "graph q");
  // One eager decode per layer first: one-time kernel attributes are set outside the capture.
  for (int32_t l = 0; l < L(); ++l) {
    Check(twl_decode_batch(rt_, batch_id_, l, graph_q_.as<char>() + size_t(l) * q_bytes,
                           graph_out_.as<void>(), TWL_DTYPE_FP16, stream_),
          rt_, "twl_decode_batch (warm-up)");
  }
  CheckOk(gpu::StreamSync(stream_), "graph warm-up");
  if (absl::GetFlag(FLAGS_graph_appends)) {
    // One graph of the whole step. twl_batch_append needs a reservation before it is
    // captured: this one is the next step's (StepGraph then skips its own).
    const size_t kv_bytes = size_t(B) * RowElems() * 2 * L();
    graph_k_.Resize(kv_bytes, true);
    graph_v_.Resize(kv_bytes, true);
    Check(twl_batch_reserve(rt_, batch_id_, stream_), rt_, "twl_batch_reserve");
    reserved_ = true;
    CheckOk(gpu::StreamBeginCapture(stream_), "begin capture");
    for (int32_t l = 0; l < L(); ++l) {
      const size_t rows = size_t(l) * B * RowElems();
      Check(twl_batch_append(rt_, batch_id_, l, graph_k_.as<fp16_t>() + rows,
                             graph_v_.as<fp16_t>() + rows, TWL_DTYPE_FP16, stream_),
            rt_, "twl_batch_append (capture)");
      Check(twl_decode_batch(rt_, batch_id_, l, graph_q_.as<char>() + size_t(l) * q_bytes,
                             graph_out_.as<void>(), TWL_DTYPE_FP16, stream_),
            rt_, "twl_decode_batch (capture)");
    }
    graphs_.push_back(OrDie(gpu::StreamEndCapture(stream_), "end capture"));
    return;
  }
  for (int32_t l = 0; l < L(); ++l) {
    CheckOk(gpu::StreamBeginCapture(stream_), "begin capture");
    Check(twl_decode_batch(rt_, batch_id_, l, graph_q_.as<char>() + size_t(l) * q_bytes,
                           graph_out_.as<void>(), TWL_DTYPE_FP16, stream_),
          rt_, "twl_decode_batch (capture)");
    graphs_.push_back(OrDie(gpu::StreamEndCapture(stream_), "end capture"));
  }
}

void Config::UnbindBatch() {
  if (batch_id_ == TWL_INVALID_BATCH_ID) return;
  if (gpu_) CheckOk(gpu::StreamSync(stream_), "graph drain");
  for (void* g : graphs_) gpu::GraphDestroy(g);
  graphs_.clear();
  Check(twl_batch_free(rt_, batch_id_), rt_, "twl_batch_free");
  batch_id_ = TWL_INVALID_BATCH_ID;
}

void Config::MeasureAccuracy(Result* res) {
  // One more step with capture on; the sampled units are read back at the middle layer.
  const int32_t B = batch_, Hq = shape_.q_heads, H = shape_.kv_heads;
  const int32_t group = Hq / H;
  const int32_t chosen = absl::GetFlag(FLAGS_accuracy_layer);
  const int32_t layer = chosen >= 0 && chosen < L() ? chosen : L() / 2;
  GenerateSegment(1 << 20, 1);
  Check(twl_runtime_set_capture_kept(rt_, 1), rt_, "capture on");
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  std::vector<float> ones(static_cast<size_t>(B), 1.0f);
  const std::vector<int32_t> counts(static_cast<size_t>(B), 1);
  for (int32_t l = 0; l < L(); ++l) {
    const size_t base = size_t(l) * B;
    Check(twl_append_batch(rt_, l, ids.data(), counts.data(), B,
                           seg_k_.as<fp16_t>() + base * RowElems(),
                           seg_v_.as<fp16_t>() + base * RowElems(), TWL_DTYPE_FP16, space,
                           stream_),
          rt_, "twl_append_batch");
    if (l != layer) continue;
    Check(twl_decode(rt_, l, ids.data(), B, seg_q_.as<fp16_t>() + base * Hq * D(),
                     out_.as<void>(), space, method_.quest_alone ? ones.data() : nullptr,
                     stream_),
          rt_, "twl_decode (capture)");
  }
  if (gpu_) CheckOk(gpu::StreamSync(stream_), "capture sync");
  Check(twl_runtime_set_capture_kept(rt_, 0), rt_, "capture off");
  for (Running& r : seqs_) ++r.len;

  const size_t qo = size_t(B) * Hq * D();
  std::vector<fp16_t> q(qo), out(qo);
  const fp16_t* q_src = seg_q_.as<fp16_t>() + size_t(layer) * B * Hq * D();
  if (gpu_) {
    CheckOk(gpu::CopyToHost(q.data(), q_src, qo * 2, nullptr), "q back");
    CheckOk(gpu::CopyToHost(out.data(), out_.as<void>(), qo * 2, nullptr), "out back");
  } else {
    std::memcpy(q.data(), q_src, qo * 2);
    std::memcpy(out.data(), out_.as<void>(), qo * 2);
  }
  // Sample units: spread over sequences and KV heads (every KV head of a few sequences, so
  // flat and peaked heads are both seen).
  const int32_t want = std::min(absl::GetFlag(FLAGS_sample_units), B * H);
  const int32_t n_seqs = std::max(1, std::min(B, (want + H - 1) / H));
  const double p = method_.quest_alone || method_.dense ? 1.0 : absl::GetFlag(FLAGS_top_p);
  const double p_eval = absl::GetFlag(FLAGS_top_p);  // oracle reference at the runtime's p
  std::vector<double> mass, err, ratio, oracle_kept;
  double attended_sum = 0, union_sum = 0, blocks_sum = 0;
  int32_t units = 0;
  int32_t mass_ok = 0;
  for (int32_t si = 0; si < n_seqs; ++si) {
    const int32_t b = int32_t(int64_t(si) * B / n_seqs);
    const twl_seq_id id = ids[size_t(b)];
    int32_t len = 0;
    Check(twl_sequence_read_kv(rt_, id, layer, nullptr, nullptr, 0, &len), rt_, "kv size");
    std::vector<uint16_t> k(size_t(len) * RowElems()), v(size_t(len) * RowElems());
    Check(twl_sequence_read_kv(rt_, id, layer, k.data(), v.data(), len, &len), rt_, "read kv");
    for (int32_t h = 0; h < H; ++h) {
      // A size query (capacity 0) answers INVALID_ARGUMENT when the list is not empty, with
      // the count filled in.
      int32_t count = 0;
      twl_runtime_last_step_kept(rt_, b, h, nullptr, 0, &count);
      std::vector<int32_t> kept(size_t(std::max(count, 1)));
      Check(twl_runtime_last_step_kept(rt_, b, h, kept.data(), int64_t(kept.size()), &count),
            rt_, "kept");
      kept.resize(size_t(count));
      std::vector<int32_t> oracle_union;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t qh = h * group + g;
        const size_t off = (size_t(b) * Hq + qh) * D();
        const bench::HeadAccuracy a =
            bench::MeasureHead(k.data(), v.data(), len, H, D(), h, q.data() + off,
                               out.data() + off, kept, p_eval);
        mass.push_back(a.true_mass);
        err.push_back(a.rel_err);
        // FP16 output rounding floors the error near 1e-3; the ratio uses that floor.
        ratio.push_back(a.rel_err / std::max(a.oracle_err, 2e-3));
        oracle_kept.push_back(a.oracle_kept);
        if (a.true_mass >= std::min(p, p_eval) - 0.02) ++mass_ok;
        std::vector<int32_t> merged;
        std::set_union(oracle_union.begin(), oracle_union.end(), a.oracle_tokens.begin(),
                       a.oracle_tokens.end(), std::back_inserter(merged));
        oracle_union.swap(merged);
      }
      attended_sum += double(kept.size());
      union_sum += double(oracle_union.size());
      for (size_t i = 0; i < kept.size(); ++i) {  // ascending: a block's rows are adjacent
        if (i == 0 || kept[i] / kPageTokens != kept[i - 1] / kPageTokens) ++blocks_sum;
      }
      ++units;
    }
  }
  res->heads = int32_t(mass.size());
  if (mass.empty()) return;
  res->min_mass = *std::min_element(mass.begin(), mass.end());
  double s = 0;
  for (double m : mass) s += m;
  res->mean_mass = s / double(mass.size());
  res->frac_mass_ok = double(mass_ok) / double(mass.size());
  res->median_err = Median(err);
  res->max_err = *std::max_element(err.begin(), err.end());
  res->median_err_ratio = Median(ratio);
  res->max_err_ratio = *std::max_element(ratio.begin(), ratio.end());
  res->median_oracle_kept = Median(oracle_kept);
  res->sample_attended = attended_sum / double(std::max(units, 1));
  res->sample_oracle_union = union_sum / double(std::max(units, 1));
  if (blocks_sum > 0) res->sample_rows_per_block = attended_sum / blocks_sum;
}

Result Config::Run() {
  Result res;
  res.shape = shape_.Name();
  res.workload = workload_;
  res.method = method_.name;
  res.batch = batch_;
  if (gpu_) {
    stream_ = OrDie(gpu::StreamCreate(), "stream");
    ev0_ = OrDie(gpu::EventCreate(), "event");
    ev1_ = OrDie(gpu::EventCreate(), "event");
  }
  const int32_t steps = method_.name == "full-offload"
                            ? std::max(1, absl::GetFlag(FLAGS_full_offload_steps))
                            : std::max(1, absl::GetFlag(FLAGS_steps));
  const int32_t warmup = std::max(0, absl::GetFlag(FLAGS_warmup));
  const int32_t churn = absl::GetFlag(FLAGS_churn_every);
  const double ctx = absl::GetFlag(FLAGS_context), spread = absl::GetFlag(FLAGS_len_spread);
  const int32_t max_len = int32_t(ctx * (1 + spread)) + 1;
  const int32_t churns = churn > 0 ? (warmup + steps) / churn + 1 : 0;
  // The disk tier's steps take seconds: its figures come from the measured steps.
  const int32_t tele_steps =
      method_.disk ? 0 : std::max(0, absl::GetFlag(FLAGS_telemetry_steps));
  // Room for the batch, the sequences that replace finished ones while pages are held, and
  // the decoded tokens.
  const int64_t max_tokens =
      int64_t(batch_ + std::min(churns, 2)) * (max_len + warmup + steps + tele_steps + 8);
  CreateRuntime(max_tokens);

  seqs_.resize(size_t(batch_));
  const auto p0 = Clock::now();
  for (Running& r : seqs_) {
    StartSequence(&r);
    if (method_.disk) {  // a disk-tier prefill of tens of GiB takes minutes: say where it is
      std::fprintf(stderr, "    prefill %d/%d sequences (%.0f s)\n", int(&r - seqs_.data()) + 1,
                   batch_, MsSince(p0) / 1000);
    }
  }
  if (gpu_) CheckOk(gpu::DeviceSync(), "prefill");
  if (method_.bound) {
    bound_room_ = max_len + warmup + steps + tele_steps + 8;
    BindBatch();
  }
  res.prefill_gbps = prefill_ms_ > 0 ? double(prefill_bytes_) / (prefill_ms_ * 1e6) : NAN;
  int64_t tokens = 0;
  for (const Running& r : seqs_) tokens += r.len;
  res.mean_len = int32_t(tokens / batch_);

  double wall_ms = 0, gpu_ms = 0, issue_ms = 0, append_ms = 0, churn_ms = 0;
  int32_t measured = 0, churn_count = 0;
  StageFigures timed_figures;  // published during the measured steps (about one layer in L)
  double disk_bytes = 0, disk_waits = 0, disk_ahead = 0;
  int64_t disk_read = 0;  // bytes read from storage during the measured steps
  int64_t last_step_id = -1;  // telemetry already counted
  int32_t step = 0;
  const int32_t total = warmup + steps;
  while (step < total) {
    // A segment runs until the next churn point (or the end).
    int32_t seg = total - step;
    if (churn > 0) seg = std::min(seg, churn - step % churn);
    GenerateSegment(step, seg);
    for (int32_t st = 0; st < seg; ++st, ++step) {
      const bool timed = step >= warmup;
      const bool profiled = gpu_ && step == total - 1 && absl::GetFlag(FLAGS_profile_last_step);
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "sync");
      if (profiled) gpu::ProfilerRange(true);
      if (gpu_) CheckOk(gpu::EventRecord(ev0_, stream_), "event");
      const int64_t io0 = bench::ProcessDiskReadBytes();
      const auto t0 = Clock::now();
      double a_ms = 0;
      Step(st, &a_ms, /*poll_kept=*/!timed);
      // Host time to issue the step's calls: equal to the wall time when the host paces the
      // GPU (launch/call overhead), well below it when the GPU does.
      const double issued = MsSince(t0);
      if (gpu_) CheckOk(gpu::EventRecord(ev1_, stream_), "event");
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "sync");
      const double w = MsSince(t0);
      if (profiled) gpu::ProfilerRange(false);
      if (!timed) continue;
      if (io0 >= 0) disk_read += bench::ProcessDiskReadBytes() - io0;
      if (method_.disk) {
        std::fprintf(stderr, "    step %d/%d: %.1f ms\n", step + 1, total, w);
      }
      wall_ms += w;
      issue_ms += issued;
      append_ms += a_ms;
      if (gpu_) gpu_ms += double(OrDie(gpu::EventElapsedMs(ev0_, ev1_), "elapsed"));
      ++measured;
      // The newest decode whose figures were published (GPU backends publish a landed
      // earlier decode without waiting; `step` tells a new one from one already counted).
      twl_step_stats s{};
      s.struct_size = sizeof(s);
      if (twl_runtime_last_step(rt_, &s) == TWL_OK && s.num_seqs > 0 && s.step != last_step_id) {
        last_step_id = s.step;
        timed_figures.Add(s);
        disk_bytes += double(s.disk_bytes_read);
        disk_waits += double(s.disk_waits);
        disk_ahead += double(s.disk_pages_read_ahead);
      }
    }
    if (churn > 0 && step < total && step % churn == 0) {
      // The oldest running sequence finishes; a new request is prefilled in its place.
      const int32_t victim = churn_count % batch_;
      Running& r = seqs_[size_t(victim)];
      UnbindBatch();  // a bound sequence cannot be freed
      Check(twl_sequence_free(rt_, r.id), rt_, "twl_sequence_free");
      const double before = prefill_ms_;
      StartSequence(&r);
      if (gpu_) CheckOk(gpu::DeviceSync(), "churn prefill");
      if (method_.bound) BindBatch();
      churn_ms += prefill_ms_ - before;
      ++churn_count;
    }
  }
  const double layer_steps = double(measured) * L();
  res.ms_layer_step = wall_ms / layer_steps;
  res.gpu_ms_layer_step = gpu_ ? gpu_ms / layer_steps : NAN;
  res.ms_append = append_ms / layer_steps;
  res.ms_issue = issue_ms / layer_steps;
  res.tokens_per_s = double(batch_) * measured / (wall_ms * 1e-3);
  const int32_t tele = timed_figures.n;
  if (tele > 0) {
    timed_figures.WriteMean(&res);  // replaced by the telemetry steps' figures when they run
    if (method_.disk) {
      res.disk_mb_step = disk_bytes / tele / 1e6;
      res.disk_waits = disk_waits / tele;
      res.disk_read_ahead = disk_ahead / tele;
    }
  }
  if (method_.disk) res.disk_mb_s = double(disk_read) / 1e6 / (wall_ms * 1e-3);
  if (tele_steps > 0) {
    // After the measured steps (no churn inside): the stage split of every layer.
    GenerateSegment(step, tele_steps);
    for (int32_t st = 0; st < tele_steps; ++st, ++step) {
      Step(st, nullptr, /*poll_kept=*/false, /*sync_each=*/true);
    }
    TelemetryByLayer(&res);
  }
  res.churn_prefill_ms = churn_count ? churn_ms / churn_count : NAN;

  twl_memory_usage mem{};
  mem.struct_size = sizeof(mem);
  Check(twl_runtime_memory(rt_, &mem), rt_, "twl_runtime_memory");
  int64_t cached = 0;
  for (const Running& r : seqs_) cached += r.len;
  const double kv_bytes = double(cached) * L() * double(RowElems()) * 4;
  const double gpu_bytes =
      double(mem.gpu_quant_bytes + mem.gpu_cache_bytes + mem.gpu_fp16_bytes);
  res.gpu_mem_ratio = gpu_ ? gpu_bytes / kv_bytes : 0.0;
  res.gpu_pool_ratio =
      gpu_ && mem.host_pool_bytes_total > 0 ? gpu_bytes / double(mem.host_pool_bytes_total) : 0.0;
  res.host_pool_gib = double(mem.host_pool_bytes_total) / double(int64_t(1) << 30);
  res.kv_gib = kv_bytes / double(int64_t(1) << 30);

  res.kept_by_layer = KeptByLayer();
  MeasureAccuracy(&res);
  return res;
}

}  // namespace twl::serve_bench
