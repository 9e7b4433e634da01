// Device rules of the row cache's mark (one kept row: stamped when resident, claimed when
// absent, listed for the copy), shared by the plan's RowMarkKernel (row_plan.cu) and by the
// attention when it marks in its own lookups (RowMarks in row_plan.h), so the two marks
// cannot drift apart.
#pragma once

#include <cstdint>

#include "pipeline/fetch/plan_grid.cuh"
#include "pipeline/fetch/row_cache/cuda/row_plan.h"

namespace twl {

// The step stamp after `old`: bumped at the first group of a step (and from 0, "never"),
// never 0.
__device__ __forceinline__ uint32_t NextRowStep(uint32_t old, bool starts) {
  const uint32_t s = old + ((starts || old == 0) ? 1u : 0u);
  return s == 0 ? 1u : s;
}

// What marking one row found.
struct RowMarkResult {
  int32_t slot = kRowAbsent;  // resident: its slot (stamped); else < 0 (read in place)
  bool hit = false;           // resident, or claimed by another unit (one copy serves both)
  bool claim = false;         // this thread claimed it (-1 -> -2): it must list it
};

// Marks row r (0 <= r < num_rows) for `step`. Nothing publishes rows while a mark runs (the
// copy comes after), so a row seen absent is claimed by exactly one thread.
__device__ __forceinline__ RowMarkResult MarkRow(int32_t* slot_of_row, uint32_t* last_use,
                                                 int64_t r, uint32_t step) {
  RowMarkResult m;
  const int32_t sl = slot_of_row[r];
  if (sl >= 0) {
    last_use[sl] = step;
    m.slot = sl;
    m.hit = true;
  } else if (sl == kRowClaimed) {
    m.slot = sl;
    m.hit = true;
  } else {
    const int32_t old = atomicCAS(&slot_of_row[r], kRowAbsent, kRowClaimed);
    if (old == kRowAbsent) {
      m.slot = kRowClaimed;
      m.claim = true;
    } else {
      if (old >= 0) last_use[old] = step;
      m.slot = old;
      m.hit = true;
    }
  }
  return m;
}

// Lists the warp's claims (every lane calls it; `claim` and row r per lane) with one atomic
// per warp. A claim past the list's capacity gives the row back (absent: read in place this
// step); returns true for such a lane.
__device__ __forceinline__ bool ListClaims(bool claim, int64_t r, int32_t* listed,
                                           RowFetch* list, int32_t capacity,
                                           int32_t* slot_of_row) {
  const unsigned cm = __ballot_sync(~0u, claim);
  if (!cm) return false;
  const int32_t k = fetch_plan::WarpClaim(listed, cm);
  if (!claim) return false;
  if (k < capacity) {
    list[k] = RowFetch{r, -1, 0};
    return false;
  }
  slot_of_row[r] = kRowAbsent;
  return true;
}

}  // namespace twl
