/* An outside program built against an installed Twilight (tests/api/install_consumer_test.cmake):
 * includes <twilight.h> from the install prefix, links -ltwilight, decodes one step on the CPU
 * backend and checks the version it was compiled with against the library it runs with. */
#include <stdio.h>

#include <twilight.h>

int main(void) {
  twl_runtime_config config = twl_runtime_config_default();
  twl_runtime* rt = NULL;
  twl_seq_id seq;
  float k[10 * 1 * 8], v[10 * 1 * 8], qf[2 * 8];
  uint16_t q[2 * 8], out[2 * 8];
  float outf[2 * 8];
  int i;

  if (twl_version() != TWL_VERSION_NUMBER) {
    fprintf(stderr, "header %d, library %u\n", TWL_VERSION_NUMBER, twl_version());
    return 1;
  }
  config.num_layers = 1;
  config.num_q_heads = 2;
  config.num_kv_heads = 1;
  config.head_dim = 8;
  config.backend = TWL_BACKEND_CPU;
  for (i = 0; i < 80; ++i) {
    k[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    v[i] = (float)((i * 53) % 7) / 7.0f - 0.5f;
  }
  for (i = 0; i < 16; ++i) qf[i] = (float)(i % 5) / 5.0f - 0.4f;
  twl_fp32_to_fp16(qf, q, 16);
  if (twl_runtime_create(&config, &rt) != TWL_OK ||
      twl_sequence_create(rt, &seq) != TWL_OK ||
      twl_sequence_append(rt, seq, 0, 10, k, v, TWL_DTYPE_FP32, TWL_MEMORY_HOST) != TWL_OK ||
      twl_decode(rt, 0, &seq, 1, q, out, TWL_MEMORY_HOST, NULL, NULL) != TWL_OK) {
    fprintf(stderr, "failed: %s\n", twl_runtime_last_error(rt));
    twl_runtime_free(rt);
    return 1;
  }
  twl_fp16_to_fp32(out, outf, 16);
  for (i = 0; i < 16; ++i) {
    /* Attention output is a convex combination of V rows: inside [-0.5, 0.5]. */
    if (!(outf[i] >= -0.5f && outf[i] <= 0.5f)) {
      fprintf(stderr, "output %d = %f outside the range of V\n", i, outf[i]);
      twl_runtime_free(rt);
      return 1;
    }
  }
  printf("consumer OK: twilight %s, backend %s\n", twl_version_string(),
         twl_runtime_backend_name(rt));
  twl_runtime_free(rt);
  return 0;
}
