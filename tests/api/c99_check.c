/* Compiled as strict C99 (-std=c99 -pedantic): proves twilight.h is plain C and that a C caller
 * can drive a runtime: create, append FP32, decode, read telemetry, free. Returns 0 on success,
 * else the number of the failed check. */
#include <stdlib.h>

#include "twilight.h"

int twl_test_c99_smoke(void);

int twl_test_c99_smoke(void) {
  twl_runtime_config config = twl_runtime_config_default();
  twl_runtime* rt = NULL;
  twl_seq_id seq = TWL_INVALID_SEQ_ID;
  twl_step_stats stats;
  float k[20 * 2 * 16], v[20 * 2 * 16], qf[4 * 16];
  uint16_t q[4 * 16], out[4 * 16];
  int i, result = 0;
  int32_t kept[4], kept_kv[2];
  unsigned seed = 12345u;

  config.num_layers = 1;
  config.num_q_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 16;
  config.backend = TWL_BACKEND_CPU;
  for (i = 0; i < 20 * 2 * 16; ++i) {
    seed = seed * 1103515245u + 12345u;
    k[i] = (float)((seed >> 16) & 0xff) / 64.0f - 2.0f;
    v[i] = (float)((seed >> 8) & 0xff) / 64.0f - 2.0f;
  }
  for (i = 0; i < 4 * 16; ++i) qf[i] = k[i] * 0.5f + 0.25f;
  twl_fp32_to_fp16(qf, q, 4 * 16);

  if (twl_runtime_create(&config, &rt) != TWL_OK) return 1;
  if (twl_sequence_create(rt, &seq) != TWL_OK) result = 2;
  if (!result && twl_sequence_append(rt, seq, 0, 20, k, v, TWL_DTYPE_FP32, TWL_MEMORY_HOST) !=
                     TWL_OK) {
    result = 3;
  }
  if (!result && twl_decode(rt, 0, &seq, 1, q, out, TWL_MEMORY_HOST, NULL, NULL) != TWL_OK) {
    result = 4;
  }
  stats.struct_size = sizeof(stats);
  if (!result && (twl_runtime_last_step(rt, &stats) != TWL_OK || stats.num_seqs != 1 ||
                  stats.layer != 0 || stats.num_q_heads != 4)) {
    result = 5;
  }
  if (!result && twl_runtime_last_step_heads(rt, NULL, kept, NULL, 4, kept_kv, 2) != TWL_OK) {
    result = 6;
  }
  for (i = 0; !result && i < 4; ++i) {
    if (kept[i] < 1 || kept[i] > 20) result = 7;
  }
  if (!result && twl_sequence_free(rt, seq) != TWL_OK) result = 8;
  if (!result && twl_sequence_free(rt, seq) != TWL_NOT_FOUND) result = 9;
  twl_runtime_free(rt);
  return result;
}
