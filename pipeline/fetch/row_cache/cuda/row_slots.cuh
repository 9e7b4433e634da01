// Device rules for moving one row in or out of the GPU row cache's slots (the maps of
// DeviceRowCache, row_plan.h), shared by the plan's invalidation kernels (row_plan.cu) and by
// the append kernel that places a decode step's new rows in free slots (runtime/cuda/
// append.cuh), so that the free stack and the two maps change one way everywhere.
#pragma once

#include <cstdint>

#include "pipeline/fetch/row_cache/cuda/row_plan.h"

namespace twl {

// Drops row r: absent, its slot (if any) free and pushed on the stack. The exchange makes one
// thread the owner when a launch lists the same row twice (a slot is pushed once).
__device__ __forceinline__ void DropRow(const DeviceRowCache& c, int64_t r) {
  if (r < 0 || r >= c.num_rows) return;
  const int32_t s = atomicExch(&c.d_slot_of_row[r], kRowAbsent);
  if (s < 0 || s >= c.num_slots) return;
  c.d_row_of_slot[s] = -1;
  c.d_last_use[s] = 0;
  c.d_free[atomicAdd(c.d_free_top, 1)] = s;
}

// A slot for freshly written row r, stamped with the last step: the one it has (cannot happen
// for a fresh row, but then the slot gets the new bytes), else the top of the free stack; -1
// when no slot is free (a later plan fetches the row, as without this). For use between
// steps only (no plan running): pops then race only with pops, so a failed pop's decrement
// is simply given back. The row is published before its bytes land, since nothing reads the
// maps until the caller's kernel has finished.
__device__ __forceinline__ int32_t TakeFreeSlot(const DeviceRowCache& c, int64_t r) {
  if (r < 0 || r >= c.num_rows) return -1;
  const int32_t cur = c.d_slot_of_row[r];
  if (cur >= 0) return cur < c.num_slots ? cur : -1;
  if (cur != kRowAbsent) return -1;
  const int32_t top = atomicSub(c.d_free_top, 1);
  if (top <= 0 || top > c.num_slots) {
    atomicAdd(c.d_free_top, 1);
    return -1;
  }
  const int32_t s = c.d_free[top - 1];
  if (s < 0 || s >= c.num_slots) return -1;  // a corrupt stack: keep the row out
  c.d_row_of_slot[s] = r;
  c.d_last_use[s] = *c.d_step;
  c.d_slot_of_row[r] = s;
  return s;
}

}  // namespace twl
