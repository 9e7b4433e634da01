// The serving loop's residency calls on the CPU (see disk_serving_sim.h).
#include "lib/disk_serving_sim.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "runtime/disk_residency.h"
#include "runtime/geometry.h"
#include "runtime/offload_disk_steps.h"
#include "runtime/runtime.h"

namespace twl::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One (layer, sequence, KV head)'s kept blocks: page indices within the sequence, rows kept.
struct KeptSet {
  std::vector<int32_t> page;
  std::vector<int32_t> rows;
};

// The GPU row cache in front of the pool, by block: how many of a block's kept rows it holds
// (kept rows of a block grow, as the appended block's do, or come back after it left a kept
// set; rows are never rewritten). Enough to tell which kept blocks a step misses.
class RowCacheModel {
 public:
  RowCacheModel(int64_t capacity_rows, int64_t window)
      : capacity_(capacity_rows), window_(window) {}
  // A new layer-step: with a bounded cache, rows unused for the window may go.
  void NewStep() {
    ++now_;
    if (capacity_ <= 0 || total_ <= capacity_ * 9 / 10) return;
    for (auto it = held_.begin(); it != held_.end();) {
      if (it->second.last + window_ < now_) {
        total_ -= it->second.rows;
        held_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  // A kept block with `rows` kept rows: the rows missed (0: all held), admitted if they fit.
  int32_t Use(int32_t block, int32_t rows) {
    Entry& e = held_[block];
    e.last = now_;
    if (e.rows >= rows) return 0;
    const int32_t missed = rows - e.rows;
    if (capacity_ <= 0 || total_ + missed <= capacity_) {
      total_ += missed;
      e.rows = rows;
    }
    return missed;
  }

 private:
  struct Entry {
    int32_t rows = 0;
    int64_t last = 0;
  };
  const int64_t capacity_, window_;
  int64_t now_ = 0, total_ = 0;
  absl::flat_hash_map<int32_t, Entry> held_;
};

class Sim {
 public:
  explicit Sim(const DiskServingSimOptions& o) : o_(o), rng_(o.seed) {}

  absl::StatusOr<DiskServingSimResult> Run() {
    if (absl::Status s = Init(); !s.ok()) return s;
    const auto t0 = Clock::now();
    for (int32_t s = 0; s < o_.seqs; ++s) {
      for (int32_t l = 0; l < o_.layers; ++l) {
        if (absl::Status st = Prefill(l, s); !st.ok()) return st;
      }
    }
    res_.prefill_ms = MsSince(t0);
    InitKept();
    for (int32_t step = 0; step < o_.warmup + o_.steps; ++step) {
      DiskServingStep st;
      if (absl::Status s = Step(&st); !s.ok()) return s;
      if (step >= o_.warmup) res_.steps.push_back(st);
    }
    return std::move(res_);
  }

 private:
  int32_t H() const { return o_.kv_heads; }
  int32_t PagesOf(int32_t tokens) const { return (tokens + o_.page_size - 1) / o_.page_size; }
  std::vector<int32_t>& PagesOfSeq(int32_t l, int32_t s) {
    return page_ids_[size_t(l) * size_t(o_.seqs) + size_t(s)];
  }
  KeptSet& Kept(int32_t l, int32_t s, int32_t h) {
    return kept_[(size_t(l) * size_t(o_.seqs) + size_t(s)) * size_t(H()) + size_t(h)];
  }

  absl::Status Init() {
    RuntimeConfig c;
    c.num_layers = o_.layers;
    c.num_q_heads = o_.kv_heads;
    c.num_kv_heads = o_.kv_heads;
    c.head_dim = o_.head_dim;
    c.page_size = o_.page_size;
    c.backend = BackendKind::kGpuOffload;  // block units, as under the GPU offload backend
    c.disk_path = o_.dir;
    g_ = GeometryOf(c);
    const int32_t pages_per_seq = PagesOf(o_.context + o_.warmup + o_.steps) + 1;
    const int64_t pages = int64_t(o_.layers) * o_.seqs * pages_per_seq;
    const int64_t blocks = pages * H();
    const int64_t prefilled = int64_t(o_.layers) * o_.seqs * PagesOf(o_.context) * H();
    const int64_t slots = std::max<int64_t>(int64_t(o_.pool_fraction * double(prefilled)), 2);
    if (blocks > (int64_t(1) << 30)) return absl::InvalidArgumentError("sim: too many blocks");
    // As twl_serve_bench: the disk holds the whole KV.
    c.disk_bytes = blocks * g_.FpBlockBytes();
    absl::StatusOr<std::unique_ptr<DiskTier>> tier = CreatePageDiskTier(c);
    if (!tier.ok()) return tier.status();
    absl::StatusOr<std::unique_ptr<DiskResidency>> disk = DiskResidency::Create(
        g_, int32_t(blocks), int32_t(slots), std::move(*tier), HostMemKind::kAligned, 1);
    if (!disk.ok()) return disk.status();
    disk_ = std::move(*disk);
    steps_ = std::make_unique<OffloadDiskSteps>(disk_.get(), o_.layers, o_.never_wait);
    rows_ = std::make_unique<RowCacheModel>(o_.gpu_cache_rows, 2 * int64_t(o_.layers));
    page_ids_.assign(size_t(o_.layers) * size_t(o_.seqs), {});
    len_.assign(size_t(o_.seqs), 0);
    res_.blocks = blocks;
    res_.slots = slots;
    return absl::OkStatus();
  }

  // The blocks of pages [p0, p1) of (l, s), allocating the pages not allocated yet.
  void BlocksOf(int32_t l, int32_t s, int32_t p0, int32_t p1, std::vector<int32_t>* blocks) {
    std::vector<int32_t>& ids = PagesOfSeq(l, s);
    for (int32_t p = p0; p < p1; ++p) {
      while (int32_t(ids.size()) <= p) ids.push_back(next_page_++);
      for (int32_t h = 0; h < H(); ++h) blocks->push_back(int32_t(g_.BlockId(ids[size_t(p)], h)));
    }
  }

  absl::Status Prefill(int32_t l, int32_t s) {
    for (int32_t t0 = 0; t0 < o_.context; t0 += o_.prefill_chunk) {
      const int32_t t1 = std::min(o_.context, t0 + o_.prefill_chunk);
      std::vector<int32_t> blocks;
      BlocksOf(l, s, t0 / o_.page_size, PagesOf(t1), &blocks);
      // Only the last page can stay partial.
      std::vector<uint8_t> open(blocks.size(), 0);
      if (t1 % o_.page_size != 0) {
        std::fill(open.end() - H(), open.end(), uint8_t(1));
      }
      DiskIoCounts io;
      if (absl::Status st = steps_->Append(blocks, open, [] { return absl::OkStatus(); }, &io);
          !st.ok()) {
        return st;
      }
    }
    if (l == o_.layers - 1) len_[size_t(s)] = o_.context;
    return absl::OkStatus();
  }

  void InitKept() {
    const int32_t pages = PagesOf(o_.context);
    const int32_t k = std::clamp(int32_t(std::lround(o_.kept_fraction * pages)), 1, pages);
    kept_.assign(size_t(o_.layers) * o_.seqs * H(), {});
    std::vector<int32_t> all(static_cast<size_t>(pages));
    for (int32_t p = 0; p < pages; ++p) all[size_t(p)] = p;
    std::uniform_int_distribution<int32_t> rows(1, 8);
    for (KeptSet& ks : kept_) {
      std::shuffle(all.begin(), all.end(), rng_);
      ks.page.assign(all.begin(), all.begin() + k);
      for (int32_t i = 0; i < k; ++i) ks.rows.push_back(rows(rng_));
    }
    res_.kept_blocks = int64_t(kept_.size()) * k;
  }

  // A few kept blocks of each set move elsewhere (full pages only).
  void Drift(int32_t l) {
    std::uniform_real_distribution<double> u(0, 1);
    std::uniform_int_distribution<int32_t> rows(1, 8);
    for (int32_t s = 0; s < o_.seqs; ++s) {
      const int32_t full = len_[size_t(s)] / o_.page_size;
      for (int32_t h = 0; h < H(); ++h) {
        KeptSet& ks = Kept(l, s, h);
        const double want = o_.drift * double(ks.page.size());
        int32_t n = int32_t(want) + (u(rng_) < want - std::floor(want) ? 1 : 0);
        absl::flat_hash_set<int32_t> in(ks.page.begin(), ks.page.end());
        std::uniform_int_distribution<int32_t> pick(0, full - 1);
        std::uniform_int_distribution<int32_t> at(0, int32_t(ks.page.size()) - 1);
        for (; n > 0; --n) {
          int32_t p = pick(rng_);
          for (int32_t tries = 0; in.contains(p) && tries < 8; ++tries) p = pick(rng_);
          if (in.contains(p)) continue;
          const int32_t i = at(rng_);
          in.erase(ks.page[size_t(i)]);
          in.insert(p);
          ks.page[size_t(i)] = p;
          ks.rows[size_t(i)] = rows(rng_);
        }
      }
    }
  }

  absl::Status Step(DiskServingStep* st) {
    for (int32_t l = 0; l < o_.layers; ++l) {
      // Append: one token per sequence, in one call (twl_append_batch).
      std::vector<int32_t> blocks;
      std::vector<uint8_t> open;
      for (int32_t s = 0; s < o_.seqs; ++s) {
        const int32_t p = len_[size_t(s)] / o_.page_size;
        BlocksOf(l, s, p, p + 1, &blocks);
        // The page stays open unless this token fills it.
        open.resize(blocks.size(), (len_[size_t(s)] + 1) % o_.page_size != 0);
      }
      DiskIoCounts aio;
      int64_t quiesces = 0;
      const auto ta = Clock::now();
      absl::Status s = steps_->Append(
          blocks, open,
          [&quiesces] {
            ++quiesces;
            return absl::OkStatus();
          },
          &aio);
      st->append_ms += MsSince(ta);
      if (!s.ok()) return s;
      st->append_quiesces += quiesces;
      st->append_loaded += aio.pages_loaded;
      st->append_written += aio.pages_written;
      st->append_read_waits += aio.waits;
      st->append_bytes_read += aio.bytes_read;
      st->append_wait_ms += aio.ms_wait;
      st->written_behind += aio.pages_written_behind;
      // Decode: the kept sets of two pipeline groups of sequences.
      Drift(l);
      const auto td = Clock::now();
      steps_->BeginStep(l);
      rows_->NewStep();
      const int32_t half = (o_.seqs + 1) / 2;
      for (int32_t gi = 0, s0 = 0; s0 < o_.seqs; ++gi, s0 += half) {
        std::vector<int32_t> gb, gr;  // the group's kept blocks and their kept rows
        for (int32_t sq = s0; sq < std::min(o_.seqs, s0 + half); ++sq) {
          const std::vector<int32_t>& ids = PagesOfSeq(l, sq);
          const int32_t last = len_[size_t(sq)] / o_.page_size;
          for (int32_t h = 0; h < H(); ++h) {
            const KeptSet& ks = Kept(l, sq, h);
            bool has_last = false;
            for (size_t i = 0; i < ks.page.size(); ++i) {
              has_last |= ks.page[i] == last;
              gb.push_back(int32_t(g_.BlockId(ids[size_t(ks.page[i])], h)));
              gr.push_back(ks.rows[i]);
            }
            if (o_.keep_last_block && !has_last) {
              gb.push_back(int32_t(g_.BlockId(ids[size_t(last)], h)));
              gr.push_back(1 + len_[size_t(sq)] % o_.page_size);
            }
          }
        }
        // The backend's sequence (runtime/gpu_offload_backend_disk.cu): with the row cache, its
        // plan's report of the missed blocks, and Group only when it lists any; else the
        // kept lists read back and every kept block handed over.
        if (o_.gpu_row_cache) {
          std::vector<int32_t> mb, mr;
          for (size_t i = 0; i < gb.size(); ++i) {
            const int32_t missed = rows_->Use(gb[i], gr[i]);
            if (missed == 0) continue;
            mb.push_back(gb[i]);
            mr.push_back(missed);
            st->decode_missed_rows += missed;
          }
          gb.swap(mb);
          gr.swap(mr);
          if (gb.empty()) continue;  // all hits: no residency work
        } else {
          ++st->decode_kept_readbacks;
        }
        bool moved = false;
        if (absl::Status gs = steps_->Group(gi, gb, gr, &moved); !gs.ok()) return gs;
      }
      if (absl::Status es = steps_->EndStep(); !es.ok()) return es;
      st->decode_ms += MsSince(td);
      const DiskIoCounts& io = steps_->step_io();
      st->decode_loaded += io.pages_loaded;
      st->decode_read_ahead += io.pages_read_ahead;
      st->decode_written += io.pages_written;
      st->decode_bytes_read += io.bytes_read;
      st->decode_read_waits += io.waits;
      st->decode_wait_ms += io.ms_wait;
      st->written_behind += io.pages_written_behind;
      st->decode_groups += steps_->step_calls().groups;
      st->decode_blocks += steps_->step_calls().blocks;
      st->decode_reserves += steps_->step_calls().reserves;
    }
    for (int32_t& n : len_) ++n;
    return absl::OkStatus();
  }

  const DiskServingSimOptions o_;
  std::mt19937 rng_;
  PageGeometry g_;
  std::unique_ptr<DiskResidency> disk_;
  std::unique_ptr<OffloadDiskSteps> steps_;
  std::unique_ptr<RowCacheModel> rows_;
  std::vector<std::vector<int32_t>> page_ids_;  // [layer][seq] page ids in order
  int32_t next_page_ = 0;
  std::vector<int32_t> len_;  // tokens per sequence (all layers)
  std::vector<KeptSet> kept_;  // [layer][seq][kv head]
  DiskServingSimResult res_;
};

}  // namespace

DiskServingStep DiskServingSimResult::Mean() const {
  DiskServingStep m;
  if (steps.empty()) return m;
  for (const DiskServingStep& s : steps) {
    m.append_ms += s.append_ms;
    m.append_quiesces += s.append_quiesces;
    m.append_loaded += s.append_loaded;
    m.append_written += s.append_written;
    m.append_read_waits += s.append_read_waits;
    m.append_bytes_read += s.append_bytes_read;
    m.append_wait_ms += s.append_wait_ms;
    m.decode_ms += s.decode_ms;
    m.decode_loaded += s.decode_loaded;
    m.decode_read_ahead += s.decode_read_ahead;
    m.decode_written += s.decode_written;
    m.decode_bytes_read += s.decode_bytes_read;
    m.decode_read_waits += s.decode_read_waits;
    m.decode_wait_ms += s.decode_wait_ms;
    m.written_behind += s.written_behind;
    m.decode_groups += s.decode_groups;
    m.decode_blocks += s.decode_blocks;
    m.decode_reserves += s.decode_reserves;
    m.decode_kept_readbacks += s.decode_kept_readbacks;
    m.decode_missed_rows += s.decode_missed_rows;
  }
  const double n = double(steps.size());
  m.append_ms /= n;
  m.append_wait_ms /= n;
  m.decode_ms /= n;
  m.decode_wait_ms /= n;
  // Counts: rounded means.
  for (int64_t* c : {&m.append_quiesces, &m.append_loaded, &m.append_written,
                     &m.append_read_waits, &m.append_bytes_read, &m.decode_loaded, &m.decode_read_ahead,
                     &m.decode_written, &m.decode_bytes_read, &m.decode_read_waits,
                     &m.written_behind, &m.decode_groups, &m.decode_blocks, &m.decode_reserves,
                     &m.decode_kept_readbacks, &m.decode_missed_rows}) {
    *c = int64_t(std::llround(double(*c) / n));
  }
  return m;
}

absl::StatusOr<DiskServingSimResult> RunDiskServingSim(const DiskServingSimOptions& options) {
  if (options.layers < 1 || options.seqs < 1 || options.kv_heads < 1 || options.context < 16 ||
      options.steps < 1 || options.page_size < 1) {
    return absl::InvalidArgumentError("disk serving sim: bad options");
  }
  Sim sim(options);
  return sim.Run();
}

}  // namespace twl::bench
