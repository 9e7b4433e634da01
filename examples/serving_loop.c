/* serving_loop.c: a continuous-batching serving loop over the Twilight C API, in plain C99,
 * using only <twilight.h>.
 *
 * Requests arrive over time with different prompt lengths and generation lengths. A request
 * joins the running batch when there is room: its prompt is "prefilled" by appending K/V for
 * every layer. Each decode step then, for every layer, appends the newest token's K/V of every
 * running request with one twl_append_batch call and calls twl_decode once for the whole batch. Finished requests are freed
 * and their slots go to waiting ones. K, V and q are synthetic but structured (a few "relevant"
 * tokens per sequence that the query aligns with), so that top-p keeps a budget that differs
 * per request, which is what the per-step lines show. Deterministic for a given --seed.
 *
 * Usage: twl_serving_loop [--backend auto|cpu|gpu-hbm|gpu-offload] [--requests N]
 *          [--max-batch N] [--layers N] [--q-heads N] [--kv-heads N] [--head-dim N]
 *          [--min-prompt N] [--max-prompt N] [--min-gen N] [--max-gen N] [--seed N]
 *          [--pool-mib N] [--quiet]
 * Exit status 0 when every request finished and every output was finite.
 */
#define _POSIX_C_SOURCE 199309L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "twilight.h"

typedef struct options {
  twl_backend backend;
  int requests, max_batch, layers, q_heads, kv_heads, head_dim;
  int min_prompt, max_prompt, min_gen, max_gen;
  unsigned long long seed;
  long long pool_mib;
  int quiet;
} options;

typedef struct request {
  int arrival_step;     /* step at which it becomes visible to the scheduler */
  int prompt_len;
  int gen_len;          /* tokens to generate */
  float top_p;          /* per-request p */
  float relevant_frac;  /* share of tokens the query attends to strongly */
  /* Running state. */
  twl_seq_id seq;
  int generated;
  int state;            /* 0 waiting, 1 running, 2 done */
  unsigned long long rng;
} request;

/* ---- Deterministic random numbers (splitmix64) ------------------------------------------ */
static unsigned long long next_u64(unsigned long long* s) {
  unsigned long long z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static float uniform(unsigned long long* s) { /* [0, 1) */
  return (float)(next_u64(s) >> 40) * (1.0f / 16777216.0f);
}
static float gaussian(unsigned long long* s) { /* Irwin-Hall approximation, variance 1 */
  return (uniform(s) + uniform(s) + uniform(s) + uniform(s) - 2.0f) * 1.7320508f;
}
static int uniform_int(unsigned long long* s, int lo, int hi) { /* [lo, hi] */
  return lo + (int)(next_u64(s) % (unsigned long long)(hi - lo + 1));
}

/* The hidden "topic" direction of KV head h of sequence r: entries +-1, fixed per (r, h). */
static float topic(const request* r, int h, int c) {
  unsigned long long s = (unsigned long long)r->seq * 1315423911ull + (unsigned long long)h * 977 +
                         (unsigned long long)c * 2654435761ull;
  return (next_u64(&s) & 1) ? 1.0f : -1.0f;
}

/* K and V of `n` tokens of request r (one layer), [n][kv_heads][head_dim] FP32. A relevant
 * token's K leans towards the topic, so queries built from the topic give it a high score. */
static void make_kv(request* r, const options* o, int n, float* k, float* v) {
  int t, h, c;
  for (t = 0; t < n; ++t) {
    const int relevant = uniform(&r->rng) < r->relevant_frac;
    for (h = 0; h < o->kv_heads; ++h) {
      float* kr = k + ((size_t)t * o->kv_heads + h) * o->head_dim;
      float* vr = v + ((size_t)t * o->kv_heads + h) * o->head_dim;
      for (c = 0; c < o->head_dim; ++c) {
        kr[c] = gaussian(&r->rng) + (relevant ? topic(r, h, c) : 0.0f);
        vr[c] = gaussian(&r->rng);
      }
    }
  }
}

/* q of request r for all query heads (GQA: head qh reads KV head qh / group). */
static void make_q(request* r, const options* o, float* q) {
  const int group = o->q_heads / o->kv_heads;
  int qh, c;
  for (qh = 0; qh < o->q_heads; ++qh) {
    for (c = 0; c < o->head_dim; ++c) {
      q[(size_t)qh * o->head_dim + c] = 0.5f * topic(r, qh / group, c) + 0.5f * gaussian(&r->rng);
    }
  }
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int check(twl_runtime* rt, twl_status s, const char* what) {
  if (s == TWL_OK) return 1;
  fprintf(stderr, "%s failed: %s: %s\n", what, twl_status_string(s), twl_runtime_last_error(rt));
  return 0;
}

static int parse_args(int argc, char** argv, options* o) {
  int i;
  o->backend = TWL_BACKEND_AUTO;
  o->requests = 24;
  o->max_batch = 8;
  o->layers = 4;
  o->q_heads = 8;
  o->kv_heads = 2;
  o->head_dim = 64;
  o->min_prompt = 64;
  o->max_prompt = 768;
  o->min_gen = 8;
  o->max_gen = 32;
  o->seed = 2502;
  o->pool_mib = 0;
  o->quiet = 0;
  for (i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--quiet") == 0) {
      o->quiet = 1;
      continue;
    }
    if (val == NULL) {
      fprintf(stderr, "missing value after %s\n", a);
      return 0;
    }
    ++i;
    if (strcmp(a, "--backend") == 0) {
      if (strcmp(val, "auto") == 0) o->backend = TWL_BACKEND_AUTO;
      else if (strcmp(val, "cpu") == 0) o->backend = TWL_BACKEND_CPU;
      else if (strcmp(val, "gpu-hbm") == 0) o->backend = TWL_BACKEND_GPU_HBM;
      else if (strcmp(val, "gpu-offload") == 0) o->backend = TWL_BACKEND_GPU_OFFLOAD;
      else {
        fprintf(stderr, "unknown backend %s\n", val);
        return 0;
      }
    } else if (strcmp(a, "--requests") == 0) o->requests = atoi(val);
    else if (strcmp(a, "--max-batch") == 0) o->max_batch = atoi(val);
    else if (strcmp(a, "--layers") == 0) o->layers = atoi(val);
    else if (strcmp(a, "--q-heads") == 0) o->q_heads = atoi(val);
    else if (strcmp(a, "--kv-heads") == 0) o->kv_heads = atoi(val);
    else if (strcmp(a, "--head-dim") == 0) o->head_dim = atoi(val);
    else if (strcmp(a, "--min-prompt") == 0) o->min_prompt = atoi(val);
    else if (strcmp(a, "--max-prompt") == 0) o->max_prompt = atoi(val);
    else if (strcmp(a, "--min-gen") == 0) o->min_gen = atoi(val);
    else if (strcmp(a, "--max-gen") == 0) o->max_gen = atoi(val);
    else if (strcmp(a, "--seed") == 0) o->seed = strtoull(val, NULL, 10);
    else if (strcmp(a, "--pool-mib") == 0) o->pool_mib = atoll(val);
    else {
      fprintf(stderr, "unknown option %s\n", a);
      return 0;
    }
  }
  if (o->requests < 1 || o->max_batch < 1 || o->layers < 1 || o->kv_heads < 1 ||
      o->q_heads < o->kv_heads || o->q_heads % o->kv_heads != 0 || o->head_dim < 8 ||
      o->min_prompt < 1 || o->max_prompt < o->min_prompt || o->min_gen < 1 ||
      o->max_gen < o->min_gen) {
    fprintf(stderr, "inconsistent options\n");
    return 0;
  }
  return 1;
}

int main(int argc, char** argv) {
  options o;
  twl_runtime_config config = twl_runtime_config_default();
  twl_runtime* rt = NULL;
  twl_status s;
  request* reqs;
  twl_seq_id* batch_ids;
  int32_t* batch_ones;
  float *batch_p, *kbuf, *vbuf, *qf;
  uint16_t *q16, *out16;
  float* outf;
  size_t token_elems, q_elems;
  int i, layer, step = 0, running = 0, done = 0, failed = 0;
  long long generated_total = 0, prefill_tokens = 0, deferred = 0;
  double decode_ms = 0, prefill_ms = 0, kept_sum = 0, ctx_sum = 0;
  long long kept_samples = 0;
  unsigned long long rng;

  if (!parse_args(argc, argv, &o)) return 2;
  config.num_layers = o.layers;
  config.num_q_heads = o.q_heads;
  config.num_kv_heads = o.kv_heads;
  config.head_dim = o.head_dim;
  config.backend = o.backend;
  config.host_pool_bytes = o.pool_mib * 1024 * 1024; /* 0: library chooses */
  s = twl_runtime_create(&config, &rt);
  if (!check(NULL, s, "twl_runtime_create")) return 1;
  twl_runtime_get_config(rt, &config);
  printf("twilight %s, backend %s: %d layers, %d q heads, %d KV heads, head_dim %d, page %d, "
         "k_bits %d, pool %lld MiB\n",
         twl_version_string(), twl_runtime_backend_name(rt), config.num_layers,
         config.num_q_heads, config.num_kv_heads, config.head_dim, config.page_size,
         config.k_bits, (long long)(config.host_pool_bytes >> 20));

  /* The workload: arrivals every other step, prompt/generation lengths and p per request. */
  rng = o.seed;
  reqs = (request*)calloc((size_t)o.requests, sizeof(request));
  for (i = 0; i < o.requests; ++i) {
    static const float kP[3] = {0.90f, 0.95f, 0.98f};
    reqs[i].arrival_step = i / 2;
    reqs[i].prompt_len = uniform_int(&rng, o.min_prompt, o.max_prompt);
    reqs[i].gen_len = uniform_int(&rng, o.min_gen, o.max_gen);
    reqs[i].top_p = kP[i % 3];
    reqs[i].relevant_frac = 0.02f + 0.18f * uniform(&rng);
    reqs[i].seq = TWL_INVALID_SEQ_ID;
    reqs[i].rng = o.seed * 7919ull + (unsigned long long)i;
  }
  token_elems = (size_t)o.kv_heads * o.head_dim;
  q_elems = (size_t)o.q_heads * o.head_dim;
  batch_ids = (twl_seq_id*)malloc(sizeof(twl_seq_id) * (size_t)o.max_batch);
  batch_p = (float*)malloc(sizeof(float) * (size_t)o.max_batch);
  batch_ones = (int32_t*)malloc(sizeof(int32_t) * (size_t)o.max_batch);
  /* K/V staging: a prompt, or one token of every sequence of a batch. */
  kbuf = (float*)malloc(sizeof(float) * token_elems *
                        (size_t)(o.max_prompt > o.max_batch ? o.max_prompt : o.max_batch));
  vbuf = (float*)malloc(sizeof(float) * token_elems *
                        (size_t)(o.max_prompt > o.max_batch ? o.max_prompt : o.max_batch));
  qf = (float*)malloc(sizeof(float) * q_elems * (size_t)o.max_batch);
  q16 = (uint16_t*)malloc(sizeof(uint16_t) * q_elems * (size_t)o.max_batch);
  out16 = (uint16_t*)malloc(sizeof(uint16_t) * q_elems * (size_t)o.max_batch);
  outf = (float*)malloc(sizeof(float) * q_elems * (size_t)o.max_batch);
  if (!reqs || !batch_ids || !batch_ones || !batch_p || !kbuf || !vbuf || !qf || !q16 || !out16 || !outf) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  for (i = 0; i < o.max_batch; ++i) batch_ones[i] = 1;

  if (!o.quiet) printf("%5s %5s %8s %10s %8s %9s %10s\n", "step", "batch", "mean_ctx",
                       "kept/head", "budget%", "step_ms", "tok/s");
  while (done < o.requests && !failed) {
    int nb = 0, deferred_now = 0;
    double t0, step_ms, step_kept = 0, step_ctx = 0;
    int step_kept_n = 0;

    /* Admission: arrived requests take free slots; prefill appends the prompt per layer. */
    t0 = now_ms();
    for (i = 0; i < o.requests && running < o.max_batch; ++i) {
      request* r = &reqs[i];
      if (r->state != 0 || r->arrival_step > step) continue;
      if (!check(rt, twl_sequence_create(rt, &r->seq), "twl_sequence_create")) {
        failed = 1;
        break;
      }
      for (layer = 0; layer < o.layers; ++layer) {
        make_kv(r, &o, r->prompt_len, kbuf, vbuf);
        s = twl_sequence_append(rt, r->seq, layer, r->prompt_len, kbuf, vbuf, TWL_DTYPE_FP32,
                                TWL_MEMORY_HOST);
        if (s != TWL_OK) break;
      }
      if (s == TWL_CAPACITY_EXHAUSTED) {
        /* The pool is full: give back what was appended and retry when requests finish. */
        twl_sequence_free(rt, r->seq);
        r->seq = TWL_INVALID_SEQ_ID;
        ++deferred;
        deferred_now = 1;
        break;
      }
      if (!check(rt, s, "twl_sequence_append (prefill)")) {
        failed = 1;
        break;
      }
      prefill_tokens += r->prompt_len;
      r->state = 1;
      ++running;
    }
    prefill_ms += now_ms() - t0;
    if (failed) break;
    if (running == 0 && deferred_now) {
      fprintf(stderr, "a %d-token prompt does not fit in the empty pool\n",
              reqs[i].prompt_len);
      failed = 1;
      break;
    }
    if (running == 0) { /* nothing has arrived yet */
      ++step;
      continue;
    }

    /* One decode step: every layer appends the new token's K/V, then decodes the batch. */
    for (i = 0; i < o.requests; ++i) {
      if (reqs[i].state != 1) continue;
      batch_ids[nb] = reqs[i].seq;
      batch_p[nb] = reqs[i].top_p;
      ++nb;
    }
    t0 = now_ms();
    for (layer = 0; layer < o.layers && !failed; ++layer) {
      twl_step_stats stats;
      int b = 0;
      for (i = 0; i < o.requests; ++i) {
        request* r = &reqs[i];
        if (r->state != 1) continue;
        /* The new token of each sequence, packed in batch order for one append call. */
        make_kv(r, &o, 1, kbuf + (size_t)b * token_elems, vbuf + (size_t)b * token_elems);
        make_q(r, &o, qf + (size_t)b * q_elems);
        ++b;
      }
      s = twl_append_batch(rt, layer, batch_ids, batch_ones, nb, kbuf, vbuf, TWL_DTYPE_FP32,
                           TWL_MEMORY_HOST, NULL);
      if (!check(rt, s, "twl_append_batch (decode)")) {
        failed = 1;
        break;
      }
      twl_fp32_to_fp16(qf, q16, q_elems * (size_t)nb);
      s = twl_decode(rt, layer, batch_ids, nb, q16, out16, TWL_MEMORY_HOST, batch_p, NULL);
      if (!check(rt, s, "twl_decode")) {
        failed = 1;
        break;
      }
      twl_fp16_to_fp32(out16, outf, q_elems * (size_t)nb);
      for (i = 0; i < (int)(q_elems * (size_t)nb); ++i) {
        if (!(outf[i] == outf[i]) || outf[i] > 1e4f || outf[i] < -1e4f) {
          fprintf(stderr, "step %d layer %d: output %d is not finite\n", step, layer, i);
          failed = 1;
          break;
        }
      }
      stats.struct_size = sizeof(stats);
      if (!check(rt, twl_runtime_last_step(rt, &stats), "twl_runtime_last_step")) failed = 1;
      step_kept += stats.mean_kept_tokens;
      ++step_kept_n;
    }
    step_ms = now_ms() - t0;
    if (failed) break;
    decode_ms += step_ms;

    /* Bookkeeping: context lengths, finished requests leave, their slots free up. */
    for (i = 0; i < o.requests; ++i) {
      request* r = &reqs[i];
      int32_t len = 0;
      if (r->state != 1) continue;
      twl_sequence_length(rt, r->seq, 0, &len);
      step_ctx += len;
      ++r->generated;
      ++generated_total;
      if (r->generated == r->gen_len) {
        if (!check(rt, twl_sequence_free(rt, r->seq), "twl_sequence_free")) failed = 1;
        r->state = 2;
        --running;
        ++done;
      }
    }
    step_kept /= step_kept_n;
    step_ctx /= nb;
    kept_sum += step_kept;
    ctx_sum += step_ctx;
    ++kept_samples;
    if (!o.quiet) {
      printf("%5d %5d %8.0f %10.1f %7.1f%% %9.2f %10.0f\n", step, nb, step_ctx, step_kept,
             100.0 * step_kept / step_ctx, step_ms, nb / (step_ms * 1e-3));
    }
    ++step;
  }

  if (!failed) {
    const double samples = kept_samples ? (double)kept_samples : 1.0;
    twl_memory_usage mem;
    mem.struct_size = sizeof(mem);
    twl_runtime_memory(rt, &mem);
    printf("done: %d requests, %d steps, %lld tokens generated, %lld prompt tokens, "
           "%lld admissions deferred (pool full)\n",
           done, step, generated_total, prefill_tokens, deferred);
    printf("decode: %.1f tokens/s (%.1f ms per step incl. %d layers), prefill append: %.0f "
           "tokens/s\n",
           generated_total / (decode_ms * 1e-3), decode_ms / samples,
           o.layers, prefill_tokens / (prefill_ms * 1e-3 + 1e-9));
    printf("budget: mean %.1f kept tokens per head of a mean context of %.0f (%.1f%%)\n",
           kept_sum / samples, ctx_sum / samples,
           100.0 * kept_sum / (ctx_sum > 0 ? ctx_sum : 1));
    printf("memory: host pool %.1f / %.1f MiB used, GPU quant %.1f MiB, GPU cache %.1f MiB\n",
           mem.host_pool_bytes_used / 1048576.0, mem.host_pool_bytes_total / 1048576.0,
           mem.gpu_quant_bytes / 1048576.0, mem.gpu_cache_bytes / 1048576.0);
    if (mem.host_pool_bytes_used != 0) {
      fprintf(stderr, "every request was freed but %lld pool bytes are still in use\n",
              (long long)mem.host_pool_bytes_used);
      failed = 1;
    }
  }
  twl_runtime_free(rt);
  free(reqs);
  free(batch_ids);
  free(batch_p);
  free(batch_ones);
  free(kbuf);
  free(vbuf);
  free(qf);
  free(q16);
  free(out16);
  free(outf);
  return failed ? 1 : 0;
}
