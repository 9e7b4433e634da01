/* twilight.h: the public C API of the Twilight KV runtime (arXiv 2502.02770), for embedding in
 * serving systems. Self-contained C99: it includes only <stddef.h> and <stdint.h> and names no
 * CUDA type (streams travel as void*).
 *
 * Model of use
 *   twl_runtime   one KV cache for one model (shape fixed at creation) on one backend:
 *                 CPU reference, GPU with all KV in HBM, or GPU with FP16 KV offloaded to host.
 *   twl_seq_id    a sequence (one request) inside a runtime, identified by a 64-bit id that the
 *                 runtime hands out; ids are never reused within one runtime.
 *   Per generated token a serving loop calls, for every layer, twl_sequence_append() for the
 *   new token's K/V of each running sequence and then twl_decode() once for the whole batch:
 *   select (Quest pages) -> prune (top-p on INT4 K) -> fetch kept FP16 blocks -> attention.
 *
 * Errors: three channels.
 *   1. Every fallible function returns a twl_status, chosen by what the caller does next
 *      (see twl_status). twl_status_string() gives a static name for each code.
 *   2. twl_runtime_last_error() gives a human-readable message for the most recent failure.
 *   3. twl_runtime_async_error() reports failures of background transfers that no call returned.
 *   No function aborts the process or lets a C++ exception escape; an unexpected failure inside
 *   the library returns TWL_INTERNAL.
 *
 * Thread safety (for every function below unless its comment says otherwise):
 *   - Functions on one twl_runtime may be called from any number of threads at once; the
 *     runtime serializes the work internally.
 *   - One sequence must not be used by two threads at the same time (append, decode that
 *     includes it, fork from it, save, free): the caller serializes per sequence. Different
 *     sequences may be driven by different threads concurrently.
 *   - twl_runtime_free() must not race with any other call on the same runtime.
 *
 * Buffers: host buffers (k, v, q, out, seqs, seq_p, the read_kv and conversion buffers) need
 *   no alignment: the library reads and writes them byte-wise (memcpy), so any address works.
 *   Device buffers (TWL_MEMORY_DEVICE) must be aligned as the GPU kernels load them: q 16
 *   bytes, out 2 bytes, k and v the size of their element (2, or 4 for FP32); otherwise the
 *   call returns TWL_INVALID_ARGUMENT before any work.
 *
 * ABI: the structs below are append-only. Their first field, struct_size, must be set to
 * sizeof(the struct) as the caller's header knows it (the *_default()/_INIT helpers do it); the
 * library reads only the fields that fit in struct_size and uses defaults for the rest.
 * Enumerator values never change. Sizes, counts and byte totals are int64_t or size_t.
 */
#ifndef TWILIGHT_H_
#define TWILIGHT_H_

#include <stddef.h>
#include <stdint.h>

/* ---- Symbol visibility --------------------------------------------------------------------
 * The library is built with hidden visibility; TWL_API marks the exported entry points. */
#if defined(_WIN32)
#if defined(TWL_BUILDING_LIBRARY)
#define TWL_API __declspec(dllexport)
#else
#define TWL_API __declspec(dllimport)
#endif
#elif defined(TWL_BUILDING_LIBRARY) && (defined(__GNUC__) || defined(__clang__))
#define TWL_API __attribute__((visibility("default")))
#else
#define TWL_API
#endif

/* The library's own sources are C++ and mark every entry point noexcept. */
#if defined(__cplusplus)
#define TWL_NOEXCEPT noexcept
#else
#define TWL_NOEXCEPT
#endif

/* ---- Version ------------------------------------------------------------------------------
 * Compile-time version of this header; twl_version() is the version of the library loaded at
 * run time. They differ only when a program runs against another build than it compiled with:
 * the same major version (and, while major is 0, the same minor) is ABI compatible. */
#define TWL_VERSION_MAJOR 0
#define TWL_VERSION_MINOR 2
#define TWL_VERSION_PATCH 1
#define TWL_VERSION_NUMBER \
  (TWL_VERSION_MAJOR * 10000 + TWL_VERSION_MINOR * 100 + TWL_VERSION_PATCH)
#define TWL_VERSION_STRING "0.2.1"

#ifdef __cplusplus
extern "C" {
#endif

/* TWL_VERSION_NUMBER of the loaded library. Never fails; any thread. */
TWL_API unsigned twl_version(void) TWL_NOEXCEPT;
/* "MAJOR.MINOR.PATCH" of the loaded library: static storage, never NULL. Any thread. */
TWL_API const char* twl_version_string(void) TWL_NOEXCEPT;

/* ---- Status -------------------------------------------------------------------------------
 * Values are fixed forever; new codes are only appended. */
typedef enum twl_status {
  TWL_OK = 0,
  /* A null handle or pointer, a shape or enum out of range, p outside (0, 1] or NaN, a file
   * saved for another model shape. Fix the call; retrying it unchanged fails again. */
  TWL_INVALID_ARGUMENT = 1,
  /* The sequence id is not (or no longer) part of this runtime. */
  TWL_NOT_FOUND = 2,
  /* The process ran out of memory (host allocation failed). Free memory or retry later. */
  TWL_OUT_OF_MEMORY = 3,
  /* The runtime's fixed KV pools are full (host pool pages, GPU memory reserved at creation).
   * Free or finish sequences (or preempt one) and retry; the cache is unchanged. */
  TWL_CAPACITY_EXHAUSTED = 4,
  /* A resource is not available now: no usable GPU for a GPU backend, a device busy or lost.
   * Retry later or create the runtime with the CPU backend. */
  TWL_UNAVAILABLE = 5,
  /* The call is valid but the state does not allow it, e.g. decoding a sequence that has no
   * tokens in that layer. Change the order of calls. */
  TWL_FAILED_PRECONDITION = 6,
  /* A file could not be opened, read or written (save/restore), or the disk tier failed to
   * read or write a page (append, decode, read_kv: nothing was lost, the page stays where it
   * was). Check the path and disk; retry once the disk works. */
  TWL_IO_ERROR = 7,
  /* A file is truncated, corrupted or not a Twilight file. Discard it; nothing was changed. */
  TWL_CORRUPT_DATA = 8,
  /* The feature is not supported by this build or backend (e.g. device pointers with the CPU
   * backend, a file format version newer than this library). */
  TWL_UNSUPPORTED = 9,
  /* A bug or an unexpected failure inside the library. The message says what; report it. */
  TWL_INTERNAL = 10,
  TWL_STATUS_FORCE_INT32_ = 0x7fffffff /* not a status: keeps the enum 32-bit everywhere */
} twl_status;

/* Static name of a code, e.g. "TWL_CAPACITY_EXHAUSTED"; "TWL_UNKNOWN_STATUS" for values not in
 * the enum. Never NULL; never freed; any thread. */
TWL_API const char* twl_status_string(twl_status status) TWL_NOEXCEPT;

/* ---- Enums -------------------------------------------------------------------------------
 * Each enum ends with a *_FORCE_INT32_ member that is not a value: it fixes the enum's size at
 * 32 bits for every compiler (the ABI) and keeps any non-negative int a valid C++ value of it. */
typedef enum twl_backend {
  TWL_BACKEND_AUTO = 0,        /* GPU offload when a usable GPU is present, else CPU */
  TWL_BACKEND_CPU = 1,         /* CPU reference pipeline (host memory only) */
  TWL_BACKEND_GPU_HBM = 2,     /* GPU, all FP16 KV in device memory */
  TWL_BACKEND_GPU_OFFLOAD = 3, /* GPU, FP16 KV in pinned host memory + a hot-page GPU cache */
  TWL_BACKEND_FORCE_INT32_ = 0x7fffffff
} twl_backend;

typedef enum twl_dtype {
  TWL_DTYPE_FP16 = 0, /* IEEE binary16 */
  TWL_DTYPE_BF16 = 1, /* bfloat16 */
  TWL_DTYPE_FP32 = 2, /* IEEE binary32 */
  TWL_DTYPE_FORCE_INT32_ = 0x7fffffff
} twl_dtype;

typedef enum twl_memory_space {
  TWL_MEMORY_HOST = 0,  /* ordinary (or pinned) host memory */
  TWL_MEMORY_DEVICE = 1, /* memory of the runtime's GPU; GPU backends only */
  TWL_MEMORY_FORCE_INT32_ = 0x7fffffff
} twl_memory_space;

typedef enum twl_selector {
  TWL_SELECTOR_DEFAULT = 0, /* library chooses: FULL, or QUEST when a selector budget caps it */
  TWL_SELECTOR_QUEST = 1,   /* top-B0 pages by the Quest bound, then top-p pruning */
  TWL_SELECTOR_FULL = 2,    /* every page is a candidate: top-p pruning alone */
  TWL_SELECTOR_DOUBLE_SPARSITY = 3, /* top pages by q.k over a few outlier channels of K
                                       (Double Sparsity), then top-p pruning; needs
                                       k_bits < 16 and a selector budget (cap) */
  TWL_SELECTOR_FORCE_INT32_ = 0x7fffffff
} twl_selector;

typedef enum twl_fetch_path {
  TWL_FETCH_AUTO = 0,        /* chosen by measurement */
  TWL_FETCH_GATHER = 1,      /* SM-driven gather from mapped pinned memory */
  TWL_FETCH_COPY_ENGINE = 2, /* DMA copy engine */
  TWL_FETCH_FORCE_INT32_ = 0x7fffffff
} twl_fetch_path;

/* Values of twl_runtime_config.k_scheme: how the estimation copy of K is scaled. */
#define TWL_K_SCHEME_AUTO 0         /* library chooses: TWL_K_SCHEME_PAGE_CHANNEL */
#define TWL_K_SCHEME_PAGE_CHANNEL 1 /* per page and channel, over the block's Quest min/max */
#define TWL_K_SCHEME_TOKEN 2        /* one scale/zero per token (the previous default) */

/* ---- Runtime configuration -----------------------------------------------------------------
 * Fill with twl_runtime_config_default() (or TWL_RUNTIME_CONFIG_INIT), then set the model shape.
 * Sentinels: a field documented "0: library chooses" (or "-1: ...") takes the library's default;
 * twl_runtime_get_config() reports the values actually used. */
typedef struct twl_runtime_config {
  size_t struct_size;       /* sizeof(twl_runtime_config) */
  /* Model shape: required (0 is invalid). */
  int32_t num_layers;       /* 1 .. 4096 (every sequence holds a table of num_layers) */
  int32_t num_q_heads;      /* a multiple of num_kv_heads (GQA), at most 1024; GPU backends
                               take at most 16 query heads per KV head (max_q_per_kv) */
  int32_t num_kv_heads;     /* 1 .. 1024 */
  int32_t head_dim;         /* 8, 16, 32, 64, 96, 128 or 256; GPU backends accept 64, 96,
                               128 and 256 (twl_get_capabilities; others fail at create) */
  /* Cache layout. */
  int32_t page_size;        /* tokens per page; 0: library chooses (16) */
  int32_t k_bits;           /* bits of the estimation copy of K: 2, 4, 8, or 16 (estimate with
                               FP16 K); 0: library chooses (4) */
  /* Twilight. */
  float top_p;              /* default top-p mass in (0, 1]; 0: library chooses (0.95).
                               p = 1 keeps every candidate token (dense over the selected
                               pages), whatever its estimated weight */
  twl_selector selector;    /* TWL_SELECTOR_DEFAULT: library chooses (FULL; QUEST with a cap) */
  /* Quest needs no base budget: for each (sequence, KV head) it grows the candidate pages in
   * the order of their Quest bounds until the kept set's estimated softmax mass over the FULL
   * context is provably >= top_p (the mass outside the candidates is bounded by the pages'
   * bounds), up to every page for a head that needs it. The two fields below only CAP the
   * ranked candidate pages (sinks and the last page come on top); a capped head keeps top_p
   * of its candidates' mass and is reported by twl_runtime_last_step_mass. Each sequence's
   * candidates depend on its own tokens only. */
  int32_t selector_budget_tokens;  /* cap in tokens (> 0); 0: use selector_budget_fraction */
  float selector_budget_fraction;  /* cap as a fraction of each sequence's own context in
                                      (0, 1]; 1: no cap; 0: library chooses (1: no cap) */
  int32_t sink_pages;       /* first pages always selected; -1: library chooses (1);
                               sink_pages * page_size at most 2^30 */
  int32_t dense_layers;     /* first layers decoded densely; -1: library chooses (0) */
  /* Memory. */
  int64_t host_pool_bytes;  /* FP16 KV pool (host for offload/CPU, device for GPU_HBM);
                               0: library chooses (1 GiB) */
  int64_t gpu_cache_bytes;  /* hot FP16 page cache on the GPU; 0: library chooses */
  twl_fetch_path fetch_path;
  /* Placement. */
  twl_backend backend;      /* TWL_BACKEND_AUTO: GPU offload if a GPU is usable, else CPU */
  int32_t device_id;        /* CUDA device ordinal; -1: library chooses (0) */
  /* Telemetry: 1 keeps the per-head statistics of each decode for twl_runtime_last_step*;
   * 0 skips collecting them (GPU backends then avoid a device-to-host copy per step);
   * -1: library chooses (1). */
  int32_t collect_telemetry;
  /* ---- Appended after collect_telemetry: the disk tier. ----
   * KV larger than host memory: FP16 pages that do not fit in the host pool are spilled to one
   * file (io_uring, O_DIRECT where the filesystem allows it) in the existing directory
   * disk_path, of disk_bytes bytes reserved at creation; the file is unlinked at once and is
   * not storage (contents are lost with the runtime). NULL/0 (both): no disk tier; setting
   * only one is TWL_INVALID_ARGUMENT. CPU and GPU offload backends (TWL_BACKEND_AUTO then
   * picks the CPU; the GPU HBM backend gives TWL_UNSUPPORTED; under the GPU offload backend
   * the host pool is pinned, the quantized K stays on the GPU and k_bits must be < 16). The cache then holds host pool pages + disk pages
   * - 1, a disk page taking the page's FP16 size rounded up to the file's I/O alignment (512
   * bytes where the filesystem allows it, else 4 KiB); the quantized K copy (about 1/5 of
   * FP16 at 4 bits) of every page stays in host memory. A decode step needs every page it attends to in the host pool at once (else
   * TWL_CAPACITY_EXHAUSTED). disk_path is read during twl_runtime_create only. */
  const char* disk_path;
  int64_t disk_bytes;
  /* ---- Appended after disk_bytes: how the estimation copy of K is scaled. ----
   * TWL_K_SCHEME_AUTO (0, library chooses; also for callers whose struct ends before this
   * field): TWL_K_SCHEME_PAGE_CHANNEL.
   * TWL_K_SCHEME_PAGE_CHANNEL (1): each channel of a block is quantized over the block's own
   *    Quest min/max (no per-token scale/zero; 4 bytes per token and KV head less). Channels
   *    with large values (K's outlier channels) then no longer coarsen the others: at 4 bits
   *    the score error falls about 7x, and at p = 0.95 100% of heads keep >= p - 0.02 of the
   *    true attention mass vs 95.3% per token (bench/ACCURACY.md, 16k context, 5 seeds), which
   *    is why it became the default.
   * TWL_K_SCHEME_TOKEN (2): one scale/zero per token and KV head over head_dim (the default
   *    before; its GPU score pass is the faster one).
   * Every backend. k_bits 16 keeps no quantized copy and ignores the scheme (it is still
   * checked and reported). Other values are TWL_INVALID_ARGUMENT. twl_runtime_get_config
   * reports 1 or 2, never 0. */
  int32_t k_scheme;
  /* ---- Appended after k_scheme: the element type of the stored K/V. ----
   * TWL_DTYPE_FP16 (the default, also for callers whose struct ends before this field) or
   * TWL_DTYPE_BF16: the pages of the host pool, the HBM pool, the GPU cache and the disk tier
   * hold K/V as this type (2 bytes an element either way: memory use is unchanged). BF16 keeps
   * K/V of BF16 models exact and never overflows (FP16 saturates above 65504); appends of
   * other dtypes are rounded to it (nearest even). twl_sequence_read_kv returns it;
   * twl_sequence_save records it and twl_sequence_restore refuses a file of the other type
   * (TWL_INVALID_ARGUMENT). The estimation copy (scale/zero, Quest min/max) stays FP16. BF16
   * needs k_bits 2, 4 or 8. Every backend; TWL_DTYPE_FP32 or another value is
   * TWL_INVALID_ARGUMENT. */
  twl_dtype kv_dtype;
  /* ---- Appended after kv_dtype: what the GPU offload backend's GPU cache holds. ----
   * 0 (library chooses; also for callers whose struct ends before this field): rows, unless
   * the row map (4 bytes per cached token position of the host pool) would take more than a
   * quarter of gpu_cache_bytes; 1: whole blocks (16 tokens of one KV head, kept by value: the
   * policy before rows); 2: single tokens' K and V rows (the cache holds only rows the
   * attention reads; top-p keeps ~1-4 rows of a 16-row block at long context). Other values
   * are TWL_INVALID_ARGUMENT; other backends ignore it. */
  int32_t cache_rows;
} twl_runtime_config;

#define TWL_RUNTIME_CONFIG_INIT                                                              \
  {                                                                                          \
    sizeof(twl_runtime_config), 0, 0, 0, 0, 0, 0, 0.0f, TWL_SELECTOR_DEFAULT, 0, 0.0f, -1, \
        -1, 0, 0, TWL_FETCH_AUTO, TWL_BACKEND_AUTO, -1, -1, NULL, 0, 0, TWL_DTYPE_FP16, 0   \
  }

/* A configuration with every tunable at "library chooses" and the model shape unset. Inline,
 * so struct_size is the size this header knows. */
static inline twl_runtime_config twl_runtime_config_default(void) {
  twl_runtime_config config = TWL_RUNTIME_CONFIG_INIT;
  return config;
}

/* ---- Runtime ------------------------------------------------------------------------------ */
typedef struct twl_runtime twl_runtime;
typedef int64_t twl_seq_id;
#define TWL_INVALID_SEQ_ID ((twl_seq_id)-1)

/* Creates a runtime: allocates its KV pools and, for GPU backends, device memory.
 * config: read during the call only. out: receives the handle (owned by the caller, release with
 * twl_runtime_free); set to NULL on failure.
 * Status: TWL_INVALID_ARGUMENT (null pointer, bad struct_size, shape or tunable out of range,
 *   including bounds that keep the library's sizes from overflowing: see the fields;
 *   disk_path not a directory or disk_bytes below one page),
 *   TWL_UNAVAILABLE (a GPU backend was asked for and no usable GPU is present),
 *   TWL_UNSUPPORTED (a disk tier with the GPU HBM backend),
 *   TWL_OUT_OF_MEMORY / TWL_CAPACITY_EXHAUSTED (pools could not be allocated, or the disk lacks
 *   disk_bytes of free space), TWL_IO_ERROR (the disk tier's file cannot be created),
 *   TWL_INTERNAL.
 * On failure nothing is allocated; the message is twl_runtime_last_error(NULL). */
TWL_API twl_status twl_runtime_create(const twl_runtime_config* config,
                                      twl_runtime** out) TWL_NOEXCEPT;

/* Frees the runtime, every sequence in it and its memory. NULL is a no-op. The caller must
 * ensure no other call on rt is running or will start, and that GPU work it enqueued with
 * twl_decode or twl_append_batch on its own streams has finished. */
TWL_API void twl_runtime_free(twl_runtime* rt) TWL_NOEXCEPT;

/* The message of the most recent call on rt by the calling thread that failed, or "" if none
 * has (successful calls do not clear it, so read it right after the failing call). Messages
 * start with the function's name, e.g. "twl_decode: unknown sequence 42".
 * rt == NULL (or not a live handle): the calling thread's most recent failure of a call that
 * had no valid runtime (twl_runtime_create, or any call passed rt == NULL).
 * Lifetime: owned by the library; valid until this thread's next failing call on the same rt
 * (or NULL), twl_runtime_free(rt), or the end of the thread. A thread's messages (and its
 * last-step telemetry) end with it: a new thread starts with none, even when the system
 * gives it the id of one that has ended. Never returns NULL. Any thread. */
TWL_API const char* twl_runtime_last_error(const twl_runtime* rt) TWL_NOEXCEPT;

/* The first failure of a background transfer (offload/prefetch) since the previous call, and
 * clears it; TWL_OK when there was none. When not TWL_OK its message is also this thread's
 * twl_runtime_last_error(rt). Such a failure may have left the output of the decode steps
 * issued after it wrong: a serving system should fail the affected requests.
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (rt NULL), or the failure's own code. */
TWL_API twl_status twl_runtime_async_error(twl_runtime* rt) TWL_NOEXCEPT;

/* The configuration in use, with every sentinel replaced by the value chosen.
 * out->struct_size must be set by the caller; only that many bytes are written.
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null, struct_size too small). */
TWL_API twl_status twl_runtime_get_config(const twl_runtime* rt,
                                          twl_runtime_config* out) TWL_NOEXCEPT;

/* The backend in use (never TWL_BACKEND_AUTO), or TWL_BACKEND_AUTO for rt == NULL. */
TWL_API twl_backend twl_runtime_backend(const twl_runtime* rt) TWL_NOEXCEPT;
/* Human-readable backend name, e.g. "cpu" or "gpu-offload (NVIDIA H100 ...)". Owned by rt,
 * valid until twl_runtime_free(rt); "" for rt == NULL. */
TWL_API const char* twl_runtime_backend_name(const twl_runtime* rt) TWL_NOEXCEPT;

/* ---- Sequences -----------------------------------------------------------------------------
 * A sequence holds, per layer, the K/V of its tokens; layers may have different lengths while a
 * prompt is being prefilled layer by layer. */

/* Creates an empty sequence (no page is allocated until the first append). *out receives its
 * id (TWL_INVALID_SEQ_ID on failure).
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null), TWL_OUT_OF_MEMORY, TWL_INTERNAL. */
TWL_API twl_status twl_sequence_create(twl_runtime* rt, twl_seq_id* out) TWL_NOEXCEPT;

/* Frees a sequence and the pages only it used. The id becomes unknown (TWL_NOT_FOUND).
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (rt NULL), TWL_NOT_FOUND (nothing changed),
 *   TWL_FAILED_PRECONDITION (seq is in a bound batch, twl_batch_create: nothing changed). */
TWL_API twl_status twl_sequence_free(twl_runtime* rt, twl_seq_id seq) TWL_NOEXCEPT;

/* Creates a new sequence with the same K/V as parent in every layer (e.g. a shared prompt
 * prefix for parallel sampling). Pages are shared, not copied, so a fork costs no pool memory;
 * the partially filled last page of a layer is copied on the first append to it by either
 * sequence (copy-on-write), and that append may then return TWL_CAPACITY_EXHAUSTED. Appends to
 * one sequence never affect the other. *out receives the new id (TWL_INVALID_SEQ_ID on failure).
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null), TWL_NOT_FOUND (parent unknown: nothing created),
 *   TWL_OUT_OF_MEMORY. */
TWL_API twl_status twl_sequence_fork(twl_runtime* rt, twl_seq_id parent,
                                     twl_seq_id* out) TWL_NOEXCEPT;

/* Tokens cached for seq in layer, into *out.
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null, layer out of range), TWL_NOT_FOUND. */
TWL_API twl_status twl_sequence_length(const twl_runtime* rt, twl_seq_id seq, int32_t layer,
                                       int32_t* out) TWL_NOEXCEPT;

/* Appends n tokens to seq in layer. k and v are each [n][num_kv_heads][head_dim] elements of
 * dtype, row-major, in memory space `space` (device pointers need a GPU backend). They are read
 * during the call only (on GPU backends the copy is complete when the call returns;
 * twl_append_batch appends many sequences at once without waiting).
 * n == 0 is a no-op (k and v may then be NULL). Values are stored as FP16. Room for the n
 * tokens is checked before k and v are read or converted: a call that cannot fit reads nothing.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (null, n < 0, layer/dtype/space out of range);
 *   TWL_NOT_FOUND; TWL_CAPACITY_EXHAUSTED (pool full; with a disk tier: host pool and disk tier
 *   full); TWL_IO_ERROR (disk tier: a page could not be spilled or read back); TWL_UNSUPPORTED
 *   (device memory on the CPU backend); TWL_INTERNAL. All-or-nothing: on any failure the
 *   sequence is unchanged (with a disk tier other pages may have moved between host and disk,
 *   which changes no data). */
TWL_API twl_status twl_sequence_append(twl_runtime* rt, twl_seq_id seq, int32_t layer,
                                       int32_t n, const void* k, const void* v,
                                       twl_dtype dtype, twl_memory_space space) TWL_NOEXCEPT;

/* Copies the cached K and V of seq in layer to host buffers, in the runtime's kv_dtype (FP16
 * unless the config asked for BF16), each
 * [len][num_kv_heads][head_dim], where len = twl_sequence_length(). capacity_tokens is the size
 * of k and v in tokens. *out_len (required) receives len even when the buffers are too small.
 * k and v may be NULL when capacity_tokens is 0 (a size query). Buffers are owned by the caller.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (null, layer out of range, capacity_tokens < len: then
 *   nothing is written to k and v); TWL_NOT_FOUND; TWL_IO_ERROR (disk tier: a page on disk could
 *   not be read; nothing changed, retry). Reading spilled pages does not move them. */
TWL_API twl_status twl_sequence_read_kv(const twl_runtime* rt, twl_seq_id seq, int32_t layer,
                                        uint16_t* k, uint16_t* v, int64_t capacity_tokens,
                                        int32_t* out_len) TWL_NOEXCEPT;

/* ---- Decode --------------------------------------------------------------------------------
 * One Twilight decode-attention step of one layer for a batch of sequences:
 *   q    [num_seqs][num_q_heads][head_dim] FP16, the queries of each sequence's newest token
 *   out  [num_seqs][num_q_heads][head_dim] FP16, attention over each sequence's cached tokens
 *        (append the newest token's K/V first, so it attends to itself).
 * seqs: num_seqs distinct ids (host array, read during the call).
 * space: where q and out live. TWL_MEMORY_DEVICE (GPU backends): the step is enqueued on
 *   `stream` (a cudaStream_t, or NULL for the runtime's own stream) and out is ready when that
 *   stream reaches this point; q must stay valid until then. TWL_MEMORY_HOST: synchronous, out
 *   is ready on return. The CPU backend ignores stream.
 * seq_p: NULL (every sequence uses the runtime's top_p) or a host array [num_seqs] of per-
 *   sequence p, each in (0, 1].
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (null handle/pointer, num_seqs < 1, layer or space out of
 *   range, a duplicate id, a p outside (0, 1] or NaN); TWL_NOT_FOUND (an unknown id: the message
 *   names it); TWL_FAILED_PRECONDITION (a sequence with no tokens in this layer);
 *   TWL_UNSUPPORTED (device memory on the CPU backend); TWL_UNAVAILABLE (the device failed);
 *   with a disk tier: TWL_CAPACITY_EXHAUSTED (the step keeps more pages than the host pool
 *   holds, or the disk tier is full) and TWL_IO_ERROR (a page could not be read back: it stays
 *   on disk and a retry reads it again); TWL_INTERNAL. Never changes the cache's data (with a
 *   disk tier, pages move between host and disk). On failure out is unchanged when the status is
 *   TWL_INVALID_ARGUMENT, TWL_NOT_FOUND, TWL_FAILED_PRECONDITION or TWL_UNSUPPORTED (checked before
 *   any work), otherwise unspecified; the last-step telemetry is that of the previous success. */
TWL_API twl_status twl_decode(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                              int32_t num_seqs, const void* q, void* out,
                              twl_memory_space space, const float* seq_p,
                              void* stream) TWL_NOEXCEPT;

/* ---- Telemetry of the last decode step -----------------------------------------------------
 * "Last" = the most recent successful twl_decode on rt made by the calling thread (so threads
 * decoding concurrently each see their own). Before any, num_seqs is 0 and layer is -1.
 * GPU backends with TWL_MEMORY_DEVICE: a step's figures exist only once the GPU has run it,
 * and twl_decode never waits for the GPU, so each twl_decode publishes the figures of the
 * NEWEST EARLIER decode whose figures had landed by then (copied asynchronously; `step`,
 * layer and num_seqs say which decode they describe), or leaves the last figures in place
 * when none had. Steps skipped that way are not reported. Host memory and steps with
 * capture on (twl_runtime_set_capture_kept) report their own step. */
typedef struct twl_step_stats {
  size_t struct_size;       /* sizeof(twl_step_stats), set by the caller */
  int32_t layer;
  int32_t num_seqs;
  int32_t num_q_heads;      /* per-head arrays hold num_seqs * num_q_heads entries */
  int32_t num_kv_heads;     /* per-KV-head arrays hold num_seqs * num_kv_heads entries */
  int64_t blocks_needed;    /* FP16 blocks (page x KV head) read by the attention; under the
                               GPU offload backend's row cache (cache_rows) kept rows (one
                               token's K and V of one KV head), and so blocks_fetched,
                               blocks_in_place and cache_hit_rate */
  int64_t blocks_fetched;   /* of those, transferred host -> GPU in this step */
  int64_t bytes_h2d;        /* bytes transferred host -> GPU in this step */
  double cache_hit_rate;    /* 1 - blocks_fetched / blocks_needed (1 when none needed) */
  double ms_select, ms_prune, ms_fetch, ms_attend, ms_total; /* wall time per stage */
  double mean_kept_tokens;  /* mean over (sequence, query head) of the head's own kept tokens */
  double mean_kept_tokens_kv; /* mean over (sequence, KV head) of tokens attended (union) */
  /* Appended after mean_kept_tokens_kv: the disk tier (0 without one). */
  int64_t disk_pages_loaded;  /* pages read back from disk into the host pool for this step */
  int64_t disk_pages_spilled; /* pages written to disk to make room in this step */
  double ms_disk;             /* wall time of that disk I/O (included in ms_fetch) */
  /* Appended after ms_disk: which decode of the runtime these figures describe (1 = its
   * first, counting every twl_decode of any thread); a reader polling after each decode sees
   * a new step when it changes. 0 before any. */
  int64_t step;
  /* Appended after step: the disk tier under the GPU offload backend (0 otherwise). */
  int64_t disk_bytes_read;        /* payload read from disk for this step (with read-ahead) */
  int64_t disk_pages_read_ahead;  /* pages whose read-ahead was started after this step */
  int64_t disk_waits;             /* times this step blocked on a disk read */
  double ms_disk_wait;            /* time blocked on disk reads */
  /* Appended after the disk fields (GPU offload store; 0 elsewhere): of blocks_fetched, the blocks the
   * GPU cache's residency policy did not admit, read in place from host memory (only their
   * kept rows cross the bus), and the bytes of those rows (included in bytes_h2d). The
   * rest of bytes_h2d is whole blocks fetched into the cache. */
  int64_t blocks_in_place;
  int64_t bytes_in_place;
} twl_step_stats;

/* Scalars of the last step into *out (out->struct_size set by the caller).
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null, struct_size too small). */
TWL_API twl_status twl_runtime_last_step(const twl_runtime* rt,
                                         twl_step_stats* out) TWL_NOEXCEPT;

/* Per-head arrays of the last step into caller-owned buffers, row-major by sequence (in the
 * order of the seqs passed to twl_decode). Each pointer may be NULL (not wanted).
 *   selected  [num_seqs][num_q_heads]  candidate tokens after page selection
 *   kept      [num_seqs][num_q_heads]  tokens in the head's own top-p set (its budget)
 *   est_mass  [num_seqs][num_q_heads]  estimated softmax mass of that set within the candidates
 *                                      (full-context: twl_runtime_last_step_mass)
 *   kept_kv   [num_seqs][num_kv_heads] tokens attended by the KV head (union over its group)
 * q_capacity / kv_capacity: entries available in the q-head / KV-head arrays.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt NULL, or a wanted array's capacity too small: then
 *   nothing is written); TWL_FAILED_PRECONDITION (telemetry collection is off). Sizes come from
 *   twl_runtime_last_step(). */
TWL_API twl_status twl_runtime_last_step_heads(const twl_runtime* rt, int32_t* selected,
                                               int32_t* kept, float* est_mass,
                                               int64_t q_capacity, int32_t* kept_kv,
                                               int64_t kv_capacity) TWL_NOEXCEPT;

/* ---- Memory --------------------------------------------------------------------------------- */
typedef struct twl_memory_usage {
  size_t struct_size;            /* sizeof(twl_memory_usage), set by the caller */
  int64_t host_pool_bytes_used;  /* FP16 KV pool in use (pages held by sequences) */
  int64_t host_pool_bytes_total; /* FP16 KV pool capacity */
  int64_t gpu_quant_bytes;       /* INT4 K + page metadata on the GPU */
  int64_t gpu_cache_bytes;       /* hot FP16 page cache on the GPU */
  int64_t gpu_fp16_bytes;        /* FP16 KV on the GPU (HBM backend) */
  int64_t disk_bytes;            /* disk tier file in use (pages spilled to disk) */
  /* Appended after disk_bytes: host memory of the sequence and page tables (every sequence,
   * even an empty one, holds a record per layer; then a page id per page it references; and
   * the host copy of every bound batch's tables). */
  int64_t host_table_bytes;
} twl_memory_usage;

/* Memory by tier into *out. Status: TWL_OK, TWL_INVALID_ARGUMENT (null, struct_size too small). */
TWL_API twl_status twl_runtime_memory(const twl_runtime* rt,
                                      twl_memory_usage* out) TWL_NOEXCEPT;

/* ---- Save / restore ----------------------------------------------------------------------
 * File format (little-endian): a versioned header with the model shape, the length of every
 * layer, then the FP16 K/V in chunks, each followed by a CRC-32C; see api/persist.cc. A file can
 * be restored into any runtime with the same num_layers, num_kv_heads and head_dim (page size,
 * k_bits and backend may differ). */

/* Writes seq's K/V of every layer to path. The file is written beside path and renamed over it
 * when complete, so on failure an existing file at path is unchanged. seq is only read (the
 * caller must not append to it during the call).
 * The file is created with mode 0600 (it holds the request's K/V). path must not exist or be
 * a regular file: anything else there (a symbolic link, FIFO, device, directory) is never
 * replaced (TWL_IO_ERROR).
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null or empty path), TWL_NOT_FOUND, TWL_IO_ERROR,
 *   TWL_FAILED_PRECONDITION (seq was appended to during the save), TWL_OUT_OF_MEMORY. */
TWL_API twl_status twl_sequence_save(twl_runtime* rt, twl_seq_id seq,
                                     const char* path) TWL_NOEXCEPT;

/* Creates a new sequence from a file written by twl_sequence_save. *out receives its id.
 * The whole file is checked before anything is created.
 * path must be a regular file (or a symbolic link to one); it is opened without blocking, so
 * a FIFO or device is refused at once (TWL_IO_ERROR), never waited on.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (null, file saved for another model shape); TWL_IO_ERROR
 *   (cannot open/read, not a regular file); TWL_CORRUPT_DATA (truncated, checksum mismatch, not a Twilight file);
 *   TWL_UNSUPPORTED (newer format version); TWL_CAPACITY_EXHAUSTED. On any failure no sequence
 *   is created and the runtime is unchanged. */
TWL_API twl_status twl_sequence_restore(twl_runtime* rt, const char* path,
                                        twl_seq_id* out) TWL_NOEXCEPT;

/* ---- Conversions (host helpers for callers without half-precision types) -------------------
 * Round to nearest even; NaN and infinities preserved. n elements; src and dst must not
 * overlap. Any thread; never fail. */
TWL_API void twl_fp32_to_fp16(const float* src, uint16_t* dst, size_t n) TWL_NOEXCEPT;
TWL_API void twl_fp16_to_fp32(const uint16_t* src, float* dst, size_t n) TWL_NOEXCEPT;

/* ==== Added in 0.2: evaluation aid, what a step attended ============================
 * For benchmarks and accuracy studies that need the TRUE softmax mass of the attended set
 * (from the FP16 K, not the pruner's estimate): with capture on, every successful twl_decode
 * on rt also keeps the token positions each (sequence, KV head) attended (the union over its
 * query heads). It costs a device-to-host copy and a host wait per step on GPU backends and
 * host memory proportional to the kept tokens: not for serving. */

/* enable: 1 on, 0 off (the default). Status: TWL_OK, TWL_INVALID_ARGUMENT (rt NULL, enable not
 * 0 or 1). Any thread. */
TWL_API twl_status twl_runtime_set_capture_kept(twl_runtime* rt, int32_t enable) TWL_NOEXCEPT;

/* The ascending token positions attended by KV head kv_head of the seq_index-th sequence (in
 * the order of the seqs array) of the most recent successful twl_decode on rt with capture on,
 * by any thread. *out_count (required) receives their number even when capacity is too small
 * (then nothing is written to tokens; tokens may be NULL with capacity 0: a size query).
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt or out_count NULL, seq_index or kv_head out of
 *   range, capacity < count); TWL_FAILED_PRECONDITION (no decode with capture on yet). */
TWL_API twl_status twl_runtime_last_step_kept(const twl_runtime* rt, int32_t seq_index,
                                              int32_t kv_head, int32_t* tokens,
                                              int64_t capacity, int32_t* out_count) TWL_NOEXCEPT;

/* ==== Added in 0.2: batched appends (serving engines, prefill at link speed) ================ */

/* Appends the new tokens of many sequences in one layer with one call: counts[i] tokens to
 * seqs[i] for every i < num_seqs (ragged: counts may differ; counts[i] == 0 appends nothing to
 * seqs[i], whose id is still checked). twl_sequence_append(rt, s, layer, n, ...) is this call
 * with one sequence followed by a wait; both share one implementation.
 *   seqs, counts  host arrays [num_seqs], read during the call only; may be NULL when
 *                 num_seqs == 0 (a no-op).
 *   k, v          each [sum(counts)][num_kv_heads][head_dim] elements of dtype, row-major,
 *                 packed sequence after sequence in the order of seqs; may be NULL when
 *                 sum(counts) == 0. Values are stored as FP16.
 *   space         TWL_MEMORY_HOST: k and v are read (copied) before the call returns; the
 *                 caller may reuse them at once. TWL_MEMORY_DEVICE (GPU backends): memory of
 *                 the runtime's GPU; the append is enqueued on `stream`.
 *   stream        a cudaStream_t, or NULL. NULL means "no stream", not CUDA's default stream:
 *                 to enqueue on the legacy default stream (PyTorch's default stream, whose
 *                 handle reads 0) pass cudaStreamLegacy ((void*)1), or every device append
 *                 waits for the GPU. With device input and a stream, the call does not
 *                 synchronize the host with the device: it returns once the work is enqueued
 *                 on `stream` (it may wait only when the runtime's few staging buffers are all
 *                 still in flight, or the first time a batch this large is appended); k and v
 *                 must stay valid and unchanged until `stream` reaches the append (e.g. until
 *                 an event recorded on `stream` after the call completes). With NULL, k and v
 *                 must be ready when the call is made and the call returns once they have been
 *                 read (like twl_sequence_append). Work that reads the cache afterwards (twl_decode
 *                 on any stream, twl_sequence_read_kv, twl_sequence_save, fork) is ordered
 *                 after the append by the runtime. The CPU backend ignores stream and is
 *                 synchronous.
 * All-or-nothing across the batch: pages for every sequence are reserved first; on any failure
 *   no sequence changes (lengths and cached data are those before the call).
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt NULL, num_seqs < 0, seqs or counts NULL with
 *   num_seqs > 0, a count < 0, a sequence listed twice, k or v NULL with tokens, more than
 *   2^31-1 tokens in the call, layer/dtype/space out of range); TWL_NOT_FOUND (an unknown id:
 *   the message names it and its entry); TWL_CAPACITY_EXHAUSTED (the pool cannot hold the
 *   whole batch: free or finish sequences, or append fewer at once; with a disk tier also a
 *   batch extending more partially filled pages than the host pool holds); TWL_IO_ERROR (disk
 *   tier); TWL_UNSUPPORTED (device memory on the CPU backend); TWL_INTERNAL. A device failure
 *   after the call returned is reported by twl_runtime_async_error().
 * Thread safety: as for the calls above; a sequence must not be in two calls at once. */
TWL_API twl_status twl_append_batch(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                                    const int32_t* counts, int32_t num_seqs, const void* k,
                                    const void* v, twl_dtype dtype, twl_memory_space space,
                                    void* stream) TWL_NOEXCEPT;

/* ==== Added in 0.2: dtype-generic decode, capability query, log callback ====================
 * (Section kept separate from the entry points above so that concurrent additions merge.) */

/* twl_decode with q and out of `dtype` (FP16, BF16 or FP32; both the same dtype). The cache and
 * the attention stay FP16: the library converts q into FP16 and the FP16 result into `dtype` at
 * the boundary (host memory: on the host; device memory: a conversion kernel on the same stream
 * as the step, into device scratch, so nothing synchronizes). TWL_DTYPE_FP16 is exactly
 * twl_decode. Device memory with a non-FP16 dtype and stream == NULL runs the conversions and the
 * step on the legacy default stream. Everything else (arguments, status codes, what survives a
 * failure, telemetry, threads) is as for twl_decode; a dtype out of range is
 * TWL_INVALID_ARGUMENT. */
TWL_API twl_status twl_decode_ex(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                                 int32_t num_seqs, const void* q, void* out, twl_dtype dtype,
                                 twl_memory_space space, const float* seq_p,
                                 void* stream) TWL_NOEXCEPT;

/* What this build of the library supports. Arrays indexed by twl_backend are zero for
 * TWL_BACKEND_AUTO and for backends not built. */
#define TWL_CAPS_MAX_ARCHS 16
#define TWL_CAPS_MAX_HEAD_DIMS 8
typedef struct twl_capabilities {
  size_t struct_size;       /* sizeof(twl_capabilities), set by the caller */
  uint32_t backends_built;  /* bit (1u << b) for each twl_backend b this build has */
  int32_t gpu_usable;       /* 1 when a CUDA device is visible now (GPU backends can start) */
  int32_t num_cuda_archs;   /* entries of cuda_archs in use (0 without CUDA) */
  int32_t cuda_archs[TWL_CAPS_MAX_ARCHS]; /* compiled CUDA architectures, e.g. 90 = sm_90 */
  int32_t head_dims[4][TWL_CAPS_MAX_HEAD_DIMS]; /* per backend: head_dim values accepted,
                                                   ascending, then 0 */
  int32_t max_q_per_kv[4];  /* per backend: largest num_q_heads / num_kv_heads accepted */
  uint32_t decode_dtypes[4]; /* per backend: bit (1u << twl_dtype) of twl_decode_ex q/out dtypes */
  /* Appended after decode_dtypes: per backend, bit (1u << twl_dtype) of the kv_dtype values
   * twl_runtime_config accepts (FP16 and BF16 on every backend built). */
  uint32_t kv_dtypes[4];
} twl_capabilities;

/* Fills *out (out->struct_size set by the caller; only that many bytes are written). Probes the
 * GPU once per process (cheap afterwards). Any thread.
 * Status: TWL_OK, TWL_INVALID_ARGUMENT (null, struct_size too small). */
TWL_API twl_status twl_get_capabilities(twl_capabilities* out) TWL_NOEXCEPT;

typedef enum twl_log_level {
  TWL_LOG_ERROR = 0,   /* something failed that no call returned (e.g. a background transfer) */
  TWL_LOG_WARNING = 1, /* a degraded choice (e.g. automatic backend fell back to the CPU) */
  TWL_LOG_INFO = 2,    /* one-time facts (backend chosen) */
  TWL_LOG_DEBUG = 3,   /* every failed call's message (also returned by twl_runtime_last_error) */
  TWL_LOG_FORCE_INT32_ = 0x7fffffff
} twl_log_level;

/* Receives one message (no trailing newline; valid during the call only). May be called from
 * any thread that calls into the library, with library locks held: it must not call back into
 * the library and should return quickly. */
typedef void (*twl_log_fn)(twl_log_level level, const char* message, void* user_data);

/* Process-wide: messages of `max_level` or more severe (numerically <=) go to fn(user_data).
 * fn == NULL restores the default: messages up to TWL_LOG_WARNING (TWL_LOG_INFO with
 * TWL_VERBOSE=1 in the environment) to stderr; pass max_level = TWL_LOG_ERROR with a callback
 * that ignores everything to silence the library. Any thread, any time except from inside a
 * callback; delivery is serialized with replacement, so once this returns the previous
 * callback is never called again. Never fails (out of memory keeps the previous callback). */
TWL_API void twl_set_log_callback(twl_log_fn fn, void* user_data,
                                  twl_log_level max_level) TWL_NOEXCEPT;

/* ---- Full-context mass of the last decode step (appended) ----------------------------------
 * Per-head arrays of the last step (see twl_runtime_last_step_heads for "last" and the order),
 * caller-owned, each [num_seqs][num_q_heads]; either pointer may be NULL (not wanted).
 *   full_mass  lower bound of the estimated softmax mass of the head's kept set over the whole
 *              context (est_mass is its mass within the candidates): >= top_p unless the head
 *              hit the cap; equal to est_mass when every page was a candidate; -1 if unknown
 *   cap_hit    1 where the candidate growth stopped at selector_budget_tokens/_fraction
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt NULL, or q_capacity too small: nothing written);
 *   TWL_FAILED_PRECONDITION (telemetry collection is off). */
TWL_API twl_status twl_runtime_last_step_mass(const twl_runtime* rt, float* full_mass,
                                              int32_t* cap_hit, int64_t q_capacity) TWL_NOEXCEPT;


/* ==== Added in 0.2: bound batches, decode steps a CUDA graph can capture (issue 11.3) =========
 * A serving engine that captures its decode forward pass in a CUDA graph needs an attention
 * step whose every launch, pointer and shape is the same at each replay. twl_decode cannot be
 * replayed (it builds the batch's page tables on the host at each call). A bound batch fixes
 * a set of sequences and a row capacity (max_tokens) once; the runtime then keeps the batch's
 * lengths and page tables current in device memory itself, on every append to a bound sequence
 * (enqueued on the append's stream, after its rows, no host synchronization), and
 * twl_decode_batch decodes it with fixed shapes.
 *
 * Capture (GPU HBM and GPU offload backends): twl_decode_batch on a stream that is being
 * captured enqueues only work reading device memory that lives as long as the batch (or the
 * runtime): no host-built data, no allocation, no host wait, no telemetry. GPU HBM: no wait
 * on events recorded outside the capture either. GPU offload: the step plans its GPU row
 * cache on the device (the step stamp lives in device memory, so every replay plans the rows
 * it keeps then) on an internal stream that joins the capture and is joined back; its waits
 * for the runtime's earlier appends and steps, and its own end, are captured as external
 * event nodes (cudaEventWaitExternal / cudaEventRecordExternal): a replay is ordered after
 * the eager calls issued before its launch, and later eager calls after it, on any streams.
 * So:
 *   1. bind, then run each layer's twl_decode_batch once eagerly (warm-up: one-time kernel
 *      attributes are set outside the capture), then capture the L layers' calls;
 *   2. per step: twl_append_batch (device memory, eager, NOT captured: it allocates pages on
 *      the host) of every sequence, then replay the graph. Put the appends and the replays on
 *      one stream (or order them with your own events): the runtime orders eager calls across
 *      streams, but cannot order a replay it does not see.
 *   Or capture the appends too (added in 0.2.1, below): per step one eager twl_batch_reserve
 *   (the host's part: a row per sequence and layer, pages allocated), then one replay of a
 *   graph holding, per layer, twl_batch_append (the new K/V rows from the engine's buffers)
 *   and twl_decode_batch. Nothing of the step is then left outside the graph but the
 *   reservation.
 *   Each replay decodes the lengths the batch has when the replay runs on the device, with
 *   the same bits as an eager twl_decode_batch at that point. Outputs equal twl_decode's up to
 *   the attention's work split (it depends on the row stride: max_tokens, not the longest
 *   sequence), i.e. within FP16 rounding.
 * The graph stays valid as long as the batch: free the batch only after the last replay has
 * completed (twl_batch_free waits for the device work queued so far, not for later replays).
 *
 * GPU offload backend: with the row cache (cache_rows 0, the default, or 2) and without a
 * disk tier. Over a disk tier, or with a GPU cache of whole blocks (cache_rows 1),
 * twl_batch_create returns TWL_UNSUPPORTED (those fetch stages decide on the host at each
 * step; the message says which). A bound step splits the batch into the pipeline groups its
 * shape implies (every sequence counted at max_tokens), so its outputs can differ from
 * twl_decode's like the HBM backend's do (within FP16 rounding, kept sets up to exact ties).
 * CPU backend: everything works with host memory and synchronously (no graph there); the
 * results are bit-identical to twl_decode of the same sequences.
 * Telemetry: twl_decode_batch does not update twl_runtime_last_step* nor the kept-token
 * capture. Thread safety: as for the calls above; a bound sequence is used by every call on
 * its batch. */
typedef int64_t twl_batch_id;
#define TWL_INVALID_BATCH_ID ((twl_batch_id)0)

/* Binds seqs[0..num_seqs) (distinct, existing; their order is the batch's row order) with room
 * for max_tokens tokens per sequence and layer. Allocates the device tables ([num_layers]
 * [num_seqs][ceil(max_tokens / page_size)] page ids + lengths) and the fixed-shape step
 * scratch now; *out receives the id (TWL_INVALID_BATCH_ID on failure). A sequence may be in
 * several batches. While bound: an append that would take a sequence past max_tokens in a
 * layer fails with TWL_FAILED_PRECONDITION and appends nothing (to any sequence of that call);
 * twl_sequence_free of it fails with TWL_FAILED_PRECONDITION (free the batch first); fork,
 * read, save work as before (a fork is not bound).
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt/seqs/out NULL, num_seqs < 1, a sequence listed
 *   twice, max_tokens < 1, below the current length of a sequence in some layer or more than
 *   the KV pool holds, tables of more than 2^30 entries over all layers); TWL_NOT_FOUND (an unknown id); TWL_UNSUPPORTED (GPU
 *   offload backend over a disk tier or with cache_rows 1); TWL_CAPACITY_EXHAUSTED /
 *   TWL_OUT_OF_MEMORY (device or host memory).
 *   On failure nothing is bound. */
TWL_API twl_status twl_batch_create(twl_runtime* rt, const twl_seq_id* seqs, int32_t num_seqs,
                                    int32_t max_tokens, twl_batch_id* out) TWL_NOEXCEPT;

/* Unbinds and frees the batch's tables and scratch (waits for the device work queued so far).
 * The sequences stay. Status: TWL_OK, TWL_INVALID_ARGUMENT (rt NULL), TWL_NOT_FOUND. */
TWL_API twl_status twl_batch_free(twl_runtime* rt, twl_batch_id batch) TWL_NOEXCEPT;

/* One decode step of `layer` for every sequence of the batch, in bind order: q and out are
 * [num_seqs][num_q_heads][head_dim] of dtype (FP16, BF16 or FP32; BF16/FP32 are converted on
 * the stream into the batch's own buffers). GPU backends: device memory, enqueued on `stream`
 * (NULL: the runtime's own stream, not capturable), never blocking the host; capturable (see
 * above). CPU backend: host memory, synchronous. Every sequence uses the runtime's top_p (no
 * per-sequence p).
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt/q/out NULL, layer or dtype out of range, device
 *   pointers misaligned: q 16 bytes, out 2); TWL_NOT_FOUND (unknown batch);
 *   TWL_FAILED_PRECONDITION (a sequence has no token in the layer); TWL_INTERNAL. out is
 *   untouched on any failure found before the step is enqueued. */
TWL_API twl_status twl_decode_batch(twl_runtime* rt, twl_batch_id batch, int32_t layer,
                                    const void* q, void* out, twl_dtype dtype,
                                    void* stream) TWL_NOEXCEPT;

/* The batch's tables of `layer` as the device will see them once the appends issued so far
 * have run (GPU backends: read back from device memory, waiting for those appends; CPU: the
 * runtime's copy): lens [num_seqs] and pages [num_seqs][max_pages] with max_pages =
 * ceil(max_tokens / page_size), entries past a sequence's pages -1. For tests and debugging.
 * Either array may be NULL; *out_max_pages (optional) receives max_pages.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt NULL, layer out of range, a capacity too small:
 *   nothing written); TWL_NOT_FOUND. */
TWL_API twl_status twl_batch_tables(twl_runtime* rt, twl_batch_id batch, int32_t layer,
                                    int32_t* lens, int64_t lens_capacity, int32_t* pages,
                                    int64_t pages_capacity, int32_t* out_max_pages) TWL_NOEXCEPT;

/* ==== Added in 0.2.1: appends a CUDA graph can capture (issue 11.3) =========================
 * The host's part of an append (a row per token, pages allocated, shared pages copied) and
 * the device's part (writing K/V, codes and bounds) split in two calls, like a serving engine
 * that computes its slot mapping before the forward pass:
 *   twl_batch_reserve (eager, once per step): every sequence of the batch gets its next row in
 *     every layer, and the batch's device tables name them;
 *   twl_batch_append (capturable, once per layer): writes the new token of every sequence
 *     into the row the last reservation took in that layer, reading the row from the batch's
 *     device tables when the work runs, so a replay writes the rows of the reservation made
 *     before its launch.
 * Contract: after a reservation, fill each layer's rows with one twl_batch_append (eager or a
 * replay) before anything reads them (a decode, twl_sequence_read_kv, a save, a fork, an
 * eager append to one of the sequences, which would go after the reserved row); until then
 * the rows hold unspecified values. Put the reservation and the replay on one stream.
 * On the CPU backend both calls are synchronous and use host memory; the rows and every
 * decode are bit-identical to twl_append_batch of the same tokens. On the GPU backends the
 * rows, codes and bounds are the ones twl_append_batch writes (the same kernel). */

/* Reserves one row per sequence of the batch in every layer (each sequence's length grows by
 * one in every layer). GPU backends: the table writes are enqueued on `stream` (NULL: the
 * runtime's own), after the appends and steps issued so far; no host wait (except a shared
 * partial page's copy-on-write after a fork). All-or-nothing across sequences and layers.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt NULL); TWL_NOT_FOUND (unknown batch);
 *   TWL_FAILED_PRECONDITION (a sequence would pass the batch's max_tokens in some layer);
 *   TWL_CAPACITY_EXHAUSTED (the pool cannot hold the new pages). Nothing reserved on failure. */
TWL_API twl_status twl_batch_reserve(twl_runtime* rt, twl_batch_id batch,
                                     void* stream) TWL_NOEXCEPT;

/* Writes k and v ([num_seqs][num_kv_heads][head_dim] of dtype: FP16, BF16 or FP32; one token
 * per sequence in bind order) into the rows the batch's last twl_batch_reserve took in
 * `layer`. GPU backends: device memory, enqueued on `stream` (NULL: the runtime's own, not
 * capturable), never blocking the host; capturable in a CUDA graph with twl_decode_batch.
 * CPU backend: host memory, synchronous. Writing the same layer twice after one reservation
 * overwrites the same rows.
 * Status: TWL_OK; TWL_INVALID_ARGUMENT (rt/k/v NULL, layer or dtype out of range, device
 *   pointers not aligned to their element); TWL_NOT_FOUND (unknown batch);
 *   TWL_FAILED_PRECONDITION (no twl_batch_reserve on this batch yet); TWL_INTERNAL. */
TWL_API twl_status twl_batch_append(twl_runtime* rt, twl_batch_id batch, int32_t layer,
                                    const void* k, const void* v, twl_dtype dtype,
                                    void* stream) TWL_NOEXCEPT;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TWILIGHT_H_ */
