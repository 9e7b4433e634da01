// How the score pass (ScorePage16Kernel) splits each (sequence, KV head)'s candidate pages
// into blocks: host arithmetic only, so the CPU tests check the choice the launcher makes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace twl {

struct ScorePartition {
  int64_t blocks = 1;  // blocks per (sequence, KV head)
  int32_t run = 1;     // pages per block (the last block of a pair may hold fewer)
};

// `pairs` (sequence, KV head) rows of `pages` candidate pages each, `slots` blocks resident
// at once on the GPU (blocks per SM x SMs), runs of at most `max_run` pages (the kernel's run
// table). Whole waves where the batch allows: equal runs finish together, and a last wave 20%
// full costs as much as a full one. The first k (1 to 8) whose wave use reaches 0.95 wins;
// else the best seen. At most one block per 16 pages, unless the run table needs more.
inline ScorePartition ChooseScorePartition(int64_t pairs, int64_t pages, int64_t slots,
                                           int64_t max_run) {
  pairs = std::max<int64_t>(pairs, 1);
  pages = std::max<int64_t>(pages, 1);
  slots = std::max<int64_t>(slots, 1);
  max_run = std::max<int64_t>(max_run, 1);
  const int64_t bx_min = (pages + max_run - 1) / max_run;
  const int64_t bx_max = std::max<int64_t>(bx_min, (pages + 15) / 16);
  int64_t bx = bx_min;
  double best = -1.0;
  for (int64_t k = 1; k <= 8; ++k) {
    const int64_t b = std::clamp<int64_t>((k * slots + pairs - 1) / pairs, bx_min, bx_max);
    const double waves = double(pairs * b) / double(slots);
    const double use = waves / std::ceil(waves);
    if (use > best + 1e-9) {
      best = use;
      bx = b;
    }
    if (use >= 0.95) break;
  }
  ScorePartition out;
  out.run = int32_t((pages + bx - 1) / bx);
  out.blocks = (pages + out.run - 1) / out.run;
  return out;
}

}  // namespace twl
