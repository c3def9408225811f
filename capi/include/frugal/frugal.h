/* frugal C API: a stable C ABI over frugal's compressed allreduce, for trainers written in C,
 * for other languages' foreign-function interfaces (Python ctypes, Rust, Julia) and for C++
 * code that wants an ABI that survives frugal upgrades.
 *
 * Link with libfrugal (pkg-config: frugal; CMake: frugal::frugal). This header needs no mpi.h;
 * frugal_mpi.h adds the call that takes an MPI_Comm.
 *
 * Conventions, for every function:
 *   - The return value is a frugal_status; FRUGAL_OK (0) on success. On failure
 *     frugal_last_error_message() describes the problem. No C++ exception ever leaves the library.
 *   - NULL for a pointer argument that is not documented as optional gives
 *     FRUGAL_ERR_INVALID_ARGUMENT with a message naming the argument.
 *   - Buffers belong to the caller; the library only uses them during the call, except where a
 *     function says otherwise (asynchronous allreduces, buckets).
 *   - Objects (frugal_comm, frugal_request, frugal_state, frugal_buckets) are created by
 *     frugal_*_create* and released by the matching frugal_*_destroy / frugal_wait. Every call
 *     on one communicator, and on the states and buckets used with it, must come from one thread
 *     at a time; different communicators are independent.
 *   - Every rank must make the same collective calls on a communicator in the same order, with
 *     the same element counts and options.
 */
#ifndef FRUGAL_FRUGAL_H
#define FRUGAL_FRUGAL_H

#include <stddef.h>
#include <stdint.h>

#include "frugal/version.h"

#if defined(__GNUC__)
#define FRUGAL_API __attribute__((visibility("default")))
#else
#define FRUGAL_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------ */

/* The first six mirror frugal::ErrorCode. After FRUGAL_ERR_MISMATCH, FRUGAL_ERR_TIMEOUT,
 * FRUGAL_ERR_PEER_FAILURE or FRUGAL_ERR_TRANSPORT from a collective the communicator is failed:
 * later collectives on it fail at once with the same code; destroy it and create a new one. */
typedef enum frugal_status {
  FRUGAL_OK = 0,
  FRUGAL_ERR_INVALID_ARGUMENT = 1, /* an argument is wrong; the message names it; nothing sent */
  FRUGAL_ERR_MISMATCH = 2,         /* ranks disagree (count, method, order); nothing corrupted */
  FRUGAL_ERR_TIMEOUT = 3,          /* a wait for a peer passed its deadline */
  FRUGAL_ERR_PEER_FAILURE = 4,     /* the transport saw a peer die or disconnect */
  FRUGAL_ERR_TRANSPORT = 5,        /* MPI or UCX failed for another reason */
  FRUGAL_ERR_INTERNAL = 6,         /* a frugal bug */
  FRUGAL_ERR_UNSUPPORTED = 7,      /* this libfrugal was built without the feature (UCX) */
  FRUGAL_ERR_NO_MEMORY = 8         /* an allocation failed */
} frugal_status;

/* A static string naming `status` ("FRUGAL_ERR_TIMEOUT"); "unknown status" for other values. */
FRUGAL_API const char* frugal_status_string(frugal_status status);

/* The message of the last failed frugal call on the calling thread ("" after a successful
 * call: every call clears it). Thread-local; valid until the next frugal call on this thread. */
FRUGAL_API const char* frugal_last_error_message(void);

/* ---- version ----------------------------------------------------------------------------- */

/* The library's version as FRUGAL_VERSION_ENCODE(major, minor, patch); compare with
 * FRUGAL_VERSION (the header's) to detect a header/library skew. */
FRUGAL_API uint32_t frugal_version(void);
/* "major.minor.patch", static. */
FRUGAL_API const char* frugal_version_string(void);

/* ---- communicators ----------------------------------------------------------------------- */

typedef struct frugal_comm frugal_comm;

typedef enum frugal_transport {
  FRUGAL_TRANSPORT_MPI = 0, /* Open MPI point-to-point on a duplicate of the MPI communicator */
  FRUGAL_TRANSPORT_UCX = 1  /* UCX for data; MPI only exchanges addresses (needs UCX) */
} frugal_transport;

/* Over MPI_COMM_WORLD, initialising MPI (MPI_THREAD_MULTIPLE requested) unless the caller did;
 * frugal then finalises it at process exit, so destroy every communicator before that.
 * Collective over MPI_COMM_WORLD. For programs started by mpirun that do not include mpi.h
 * themselves (C without MPI headers, Python through ctypes). FRUGAL_ERR_UNSUPPORTED for
 * FRUGAL_TRANSPORT_UCX when built without UCX. */
FRUGAL_API frugal_status frugal_comm_create_mpi_world(frugal_transport transport,
                                                      frugal_comm** out);

/* UCX for data, bootstrapped from the environment without MPI (the torchrun habit; scripts/launch
 * sets these): FRUGAL_RANK, FRUGAL_WORLD_SIZE (required), FRUGAL_ADDR (host:port of the TCP
 * rendezvous store rank 0 serves, default 127.0.0.1:29400), FRUGAL_TOKEN, FRUGAL_TIMEOUT.
 * Collective over the ranks. FRUGAL_ERR_UNSUPPORTED when built without UCX;
 * FRUGAL_ERR_INVALID_ARGUMENT naming a missing or malformed variable. */
FRUGAL_API frugal_status frugal_comm_create_env(frugal_comm** out);

/* `size` communicators of one in-process group (ranks are threads; messages are copied in
 * memory), written to comms[0..size-1], rank i in comms[i]. For tests of code that uses frugal:
 * each rank's calls must run on a thread of its own. On failure nothing is written. */
FRUGAL_API frugal_status frugal_comm_create_loopback(int size, frugal_comm** comms);

/* Waits for the communicator's queued asynchronous allreduces, then releases it. NULL is
 * ignored. Buckets and requests made from it must not be used afterwards. */
FRUGAL_API void frugal_comm_destroy(frugal_comm* comm);

FRUGAL_API frugal_status frugal_comm_rank(const frugal_comm* comm, int* rank);
FRUGAL_API frugal_status frugal_comm_size(const frugal_comm* comm, int* size);

/* Default bound on any single wait for a peer (FRUGAL_TIMEOUT seconds from the environment,
 * else 60 s, at creation). Must be positive. */
FRUGAL_API frugal_status frugal_comm_set_timeout_ms(frugal_comm* comm, int64_t timeout_ms);

/* ---- allreduce options ------------------------------------------------------------------- */

/* Method values are frugal's wire values. */
typedef enum frugal_method {
  FRUGAL_METHOD_NONE = 0,    /* dense float32 */
  FRUGAL_METHOD_FP16 = 1,    /* IEEE half */
  FRUGAL_METHOD_BF16 = 2,    /* bfloat16 (stochastic_rounding optional) */
  FRUGAL_METHOD_TOPK = 3,    /* k largest magnitudes (density or k) */
  FRUGAL_METHOD_ONEBIT = 4,  /* signs + per-chunk scale (scaling, bucket) */
  FRUGAL_METHOD_TERNARY = 5, /* TernGrad (bucket, ternary_clip) */
  FRUGAL_METHOD_QSGD = 6     /* QSGD (bits, bucket, qsgd_norm) */
} frugal_method;

typedef enum frugal_op { FRUGAL_OP_SUM = 1, FRUGAL_OP_AVERAGE = 2 } frugal_op;

typedef enum frugal_algorithm {
  FRUGAL_ALGORITHM_AUTO = 0,
  FRUGAL_ALGORITHM_RING = 1,
  FRUGAL_ALGORITHM_RECURSIVE_DOUBLING = 2,
  FRUGAL_ALGORITHM_RABENSEIFNER = 3,
  FRUGAL_ALGORITHM_TWO_PHASE = 4,
  FRUGAL_ALGORITHM_SPARSE_ALLGATHER = 5,
  FRUGAL_ALGORITHM_SPARSE_RECURSIVE_DOUBLING = 6,
  /* Quantizers: every rank's payload to every rank, one compression per value (since 0.3) */
  FRUGAL_ALGORITHM_ALLGATHER = 7
} frugal_algorithm;

typedef enum frugal_onebit_scaling {
  FRUGAL_ONEBIT_MEAN_ABS = 0,  /* one scale per chunk: ||x||_1 / n */
  FRUGAL_ONEBIT_SIGN_MEANS = 1 /* 1-bit SGD: mean of the positive and of the negative elements */
} frugal_onebit_scaling;

typedef enum frugal_qsgd_norm {
  FRUGAL_QSGD_NORM_L2 = 0,
  FRUGAL_QSGD_NORM_MAX = 1
} frugal_qsgd_norm;

typedef enum frugal_topk_selection {
  FRUGAL_TOPK_EXACT = 0,
  FRUGAL_TOPK_SAMPLED = 1 /* DGC-style sampled threshold; count within `topk_tolerance` of k */
} frugal_topk_selection;

/* Where top-k selects in a buffer of several tensors (frugal_options.segments). */
typedef enum frugal_topk_scope {
  FRUGAL_TOPK_GLOBAL = 0,    /* one selection (one threshold) over the whole buffer */
  FRUGAL_TOPK_PER_TENSOR = 1 /* each segment keeps max(1, round(k * n_s / n)) elements */
} frugal_topk_scope;

/* What an allreduce does when some rank's input holds NaN or Inf. Decided collectively: every
 * rank takes the same decision, and all ranks must pass the same value (else
 * FRUGAL_ERR_MISMATCH). */
typedef enum frugal_non_finite {
  /* dense: no check (NaN/Inf flow into the sum, as with MPI_Allreduce); compressed: as ERROR
   * unless non_finite_flag is set */
  FRUGAL_NON_FINITE_DEFAULT = 0,
  /* FRUGAL_ERR_INVALID_ARGUMENT on every rank; buffers keep their input, error-feedback state
   * and step counter are untouched, the communicator stays usable */
  FRUGAL_NON_FINITE_ERROR = 1,
  /* every rank skips the step (buffers keep their input, state untouched) and reports it
   * through options->skipped or frugal_buckets_last_step_skipped */
  FRUGAL_NON_FINITE_SKIP = 2,
  /* each rank replaces its own NaN/Inf by 0 before compressing or reducing */
  FRUGAL_NON_FINITE_ZERO = 3
} frugal_non_finite;

typedef struct frugal_state frugal_state;

/* The accuracy guardrail of gradient buckets (docs/trainer.md, "Accuracy guardrail"): each
 * compressed bucket watches ratio = ||residual|| / ||input||, norms over every rank's vectors
 * together, smoothed by an EMA, and moves one rung up its ladder of denser settings when that
 * passes `upper`, one rung down when it has stayed below `lower` for `patience` steps. The ladder:
 * top-k density (or k) x4 per rung while <= 0.25, then dense; QSGD bits 2 -> 4 -> 8, then fp16,
 * then dense; 1-bit and ternary: fp16, then dense; fp16 and bf16: dense. Every rank takes the same
 * decision at the same step; ranks with other guardrail options get FRUGAL_ERR_MISMATCH at
 * frugal_buckets_finish. Costs one allreduce of 3 doubles per compressed bucket plus 8 per finish.
 * Passed through frugal_options.guardrail to frugal_buckets_create. Version 1; same ABI rules as
 * frugal_options: start from frugal_guardrail_options_init(). Out-of-range values are
 * FRUGAL_ERR_INVALID_ARGUMENT naming the field ("guardrail.upper"). */
typedef struct frugal_guardrail_options {
  size_t struct_size; /* sizeof(frugal_guardrail_options); set by the init call */
  double lower;       /* steps down after `patience` steps below it; finite, >= 0; default 2 */
  double upper;       /* steps up when the smoothed ratio exceeds it; finite, > lower; default 8 */
  uint64_t patience;  /* >= 1; default 200 */
  double smoothing;   /* EMA weight of the newest step's ratio, in (0, 1]; default 0.1 */
  uint64_t cooldown;  /* after a change, steps before the next step up; >= 1; default 20 */
} frugal_guardrail_options;

/* Fills `options` with the defaults above for a struct of `struct_size` bytes. */
FRUGAL_API frugal_status frugal_guardrail_options_init_sized(frugal_guardrail_options* options,
                                                             size_t struct_size);
static inline frugal_status frugal_guardrail_options_init(frugal_guardrail_options* options) {
  return frugal_guardrail_options_init_sized(options, sizeof(frugal_guardrail_options));
}

struct frugal_options;

/* compression = auto for gradient buckets (docs/trainer.md, "compression = auto"): each
 * compressed bucket tries the candidate settings online, measures what each costs, and keeps
 * the cheapest, every rank the same (the costs are agreed: the max over the ranks). Schedule, in
 * the buckets' reduced steps: steps 1..warmup run candidates[0]; then a trial runs candidate
 * 0, 1, ... for trial_steps steps each on every bucket; at its end each bucket keeps the earliest
 * candidate whose median cost is within (1 + margin) of the lowest (densest first: a sparser
 * setting must be clearly cheaper to be worth its accuracy). A change of candidate flushes the
 * residuals into the next input: no gradient mass is lost. Costs one small allgather per trial
 * step. Passed through frugal_options.autotune to frugal_buckets_create, whose own method must
 * then be FRUGAL_METHOD_NONE (auto chooses it) with error_feedback on; not with hierarchical.
 * Version 1; same ABI rules as frugal_options: start from frugal_autotune_options_init().
 * Out-of-range values are FRUGAL_ERR_INVALID_ARGUMENT naming the field ("autotune.margin"). */
typedef struct frugal_autotune_options {
  size_t struct_size; /* sizeof(frugal_autotune_options); set by the init call */
  /* The settings to choose from, densest first (ties go to the earlier), at most 16: of each,
   * only what frugal_options gives an allreduce's compression is read (method, density or k,
   * bits, bucket, onebit_scaling, qsgd_norm, topk_*, ternary_clip, non_finite_flag, ...).
   * Copied by frugal_buckets_create; not owned. NULL with candidate_count 0, the default: dense,
   * fp16 and ternary built on the buckets' own options. */
  const struct frugal_options* const* candidates;
  size_t candidate_count;
  uint64_t warmup;      /* steps of candidates[0] before the first trial; default 50 */
  uint64_t trial_steps; /* steps per candidate in a trial, >= 1; default 5 */
  uint64_t retune;      /* steps between the end of a trial and the next; 0 (default): never */
  double margin;        /* finite, >= 0; default 0.1 */
  /* Optional (NULL, the default: the measured seconds): the cost of bucket `bucket` at a trial
   * step where it ran candidate `candidate` (an index into the candidates; the guardrail may
   * have run it denser) and its allreduce took `seconds` on this rank. For costs of one's own
   * (bytes on a metered link, a model's prediction). Called by frugal_buckets_finish on the
   * calling thread with `cost_user`; must return a finite value >= 0, else that finish fails
   * with FRUGAL_ERR_INVALID_ARGUMENT naming "autotune.cost" on every rank. */
  double (*cost)(void* user, size_t bucket, size_t candidate, double seconds);
  void* cost_user;
} frugal_autotune_options;

/* Fills `options` with the defaults above (the C++ library's) for a struct of `struct_size`
 * bytes. */
FRUGAL_API frugal_status frugal_autotune_options_init_sized(frugal_autotune_options* options,
                                                            size_t struct_size);
static inline frugal_status frugal_autotune_options_init(frugal_autotune_options* options) {
  return frugal_autotune_options_init_sized(options, sizeof(frugal_autotune_options));
}

/* Version 8 of the options. ABI evolution: fields are only ever appended; struct_size tells the
 * library which version the caller compiled against, so an old program keeps working with a
 * newer library (missing fields take their defaults) and a newer program with an older library
 * works as long as the fields the library does not know are zero (else
 * FRUGAL_ERR_INVALID_ARGUMENT). Always start from frugal_options_init(). The library copies
 * the struct during the call; it may be freed afterwards. */
typedef struct frugal_options {
  size_t struct_size;      /* sizeof(frugal_options); set by frugal_options_init */
  int method;              /* frugal_method; default FRUGAL_METHOD_NONE */
  int op;                  /* frugal_op; default FRUGAL_OP_SUM */
  int algorithm;           /* frugal_algorithm; default FRUGAL_ALGORITHM_AUTO */
  double density;          /* top-k: fraction kept when k == 0; default 0.01 */
  uint64_t k;              /* top-k: elements kept (clamped to n); 0: use density */
  int bits;                /* QSGD: 2, 4 or 8; default 4 */
  uint64_t bucket;         /* 1-bit chunk / ternary / QSGD bucket; 0: the method's default */
  int onebit_scaling;      /* frugal_onebit_scaling; default MEAN_ABS */
  int qsgd_norm;           /* frugal_qsgd_norm; default MAX (L2 before 0.4) */
  int topk_selection;      /* frugal_topk_selection; default EXACT */
  double topk_tolerance;   /* sampled top-k; default 0.2 */
  int topk_fp16_values;    /* nonzero: send top-k values as binary16; default 0 */
  int stochastic_rounding; /* bf16: nonzero rounds stochastically; default 0 */
  int non_finite_flag;     /* nonzero: encode NaN/Inf and flag them instead of failing */
  int error_feedback;      /* compressed methods: keep dropped mass in `state`; default 1 */
  uint64_t seed;           /* random streams keyed by (seed, rank, step); default 0 */
  int64_t timeout_ms;      /* per-wait bound for this call; <= 0: the communicator's */
  frugal_state* state;     /* per-buffer state (residuals, step); needed by error feedback
                              with a compressed method; optional otherwise. Not owned. */
  /* Version 2 (libfrugal 0.2): */
  int non_finite; /* frugal_non_finite; default FRUGAL_NON_FINITE_DEFAULT */
  int* skipped;   /* if not NULL: set to 1 when every rank skipped the step under
                     FRUGAL_NON_FINITE_SKIP, else 0 (asynchronous calls: written when
                     frugal_test reports completion or frugal_wait returns). Not owned;
                     ignored by frugal_buckets_create. */
  /* Version 3 (libfrugal 0.4): */
  int dense_vectors;  /* buckets with a compression method: tensors added with
                         frugal_buckets_add_tensor and ndim <= 1 (biases, batch-norm
                         weights) are reduced uncompressed; default 1. Ignored by the
                         allreduce calls. */
  float ternary_clip; /* ternary: clip each bucket to +-ternary_clip times its RMS before
                         taking the scale (TernGrad); 0: none; default 2.5 */
  /* Version 4: */
  const size_t* segments; /* the tensors `buf` holds end to end: segment_count element counts,
                             each > 0, summing to count. No 1-bit, ternary or QSGD scale and
                             (with FRUGAL_TOPK_PER_TENSOR) no top-k selection covers two of
                             them. Every rank passes the same (else FRUGAL_ERR_MISMATCH) and a
                             state is bound to them. NULL with segment_count 0 (the default):
                             one tensor. Not owned; copied by the call (asynchronous calls
                             too). Ignored by frugal_buckets_create: buckets pass their
                             tensors' boundaries themselves. */
  size_t segment_count;
  int topk_scope; /* frugal_topk_scope; default FRUGAL_TOPK_GLOBAL */
  /* Version 5: */
  int topk_gtopk; /* top-k, nonzero: gTop-k, the sum cut back to the k largest
                     magnitudes at every step of the sparse recursive doubling
                     (algorithm AUTO or SPARSE_RD; each rank sends O(k log P)); what a
                     cut drops returns to the senders' error feedback. Every rank
                     passes the same (else FRUGAL_ERR_MISMATCH). Default 0. */
  /* Version 6: */
  const frugal_guardrail_options* guardrail; /* buckets: the accuracy guardrail with these
                              options (read by frugal_buckets_create; not owned); NULL, the
                              default: off. Needs error_feedback with a compression method (else
                              FRUGAL_ERR_INVALID_ARGUMENT naming "guardrail"); no effect on dense
                              buckets. Ignored by the allreduce calls. */
  /* Version 7: */
  int hierarchical; /* buckets, nonzero: reduce every bucket hierarchically
                       (docs/hierarchical.md): dense within a host, compressed between
                       hosts, dense again within the host. Hosts are discovered by
                       frugal_buckets_create (collective; FRUGAL_HOST_ID names a rank's
                       host, else its hostname and network namespace) and must all
                       hold the same number of ranks. Blocking: frugal_buckets_finish
                       reduces the buckets one after another, with no overlap of
                       backward. Not with `guardrail`;
                       frugal_buckets_last_step_wire_bytes counts the bytes between
                       hosts only. Default 0 (older structs: 0). Read by
                       frugal_buckets_create only; ignored by the allreduce calls. */
  /* Version 8: */
  const frugal_autotune_options* autotune; /* buckets: compression = auto with these options
                              (read by frugal_buckets_create, copied; not owned); NULL, the
                              default (older structs: NULL): off. A pointer to a struct of its
                              own, as with guardrail, so that auto's options can grow without
                              another frugal_options version. `method` must be
                              FRUGAL_METHOD_NONE (else FRUGAL_ERR_INVALID_ARGUMENT naming
                              "autotune"). Ignored by the allreduce calls. */
} frugal_options;

/* Fills `options` with the defaults above for a struct of `struct_size` bytes. Use the
 * frugal_options_init() wrapper from C/C++; the sized form is for FFIs (pass sizeof). */
FRUGAL_API frugal_status frugal_options_init_sized(frugal_options* options, size_t struct_size);

static inline frugal_status frugal_options_init(frugal_options* options) {
  return frugal_options_init_sized(options, sizeof(frugal_options));
}

/* ---- allreduce --------------------------------------------------------------------------- */

/* In-place allreduce of `count` floats: afterwards every rank's `buf` holds the sum (or mean)
 * over all ranks of what each rank's contribution decodes to, bit-identical on every rank.
 * `buf` may be NULL only when count is 0. `options` may be NULL (the defaults: dense sum).
 * Blocks; fails with FRUGAL_ERR_INVALID_ARGUMENT while asynchronous allreduces are pending on
 * the communicator. */
FRUGAL_API frugal_status frugal_allreduce(frugal_comm* comm, float* buf, size_t count,
                                          const frugal_options* options);

typedef struct frugal_request frugal_request;

/* Queues the same allreduce on the communicator's background thread and returns at once with
 * *request set. Until the request is done, `buf` and options->state belong to the allreduce:
 * do not touch or free them. Queued allreduces run in submission order (which must be the same
 * on every rank). Argument errors found at submission are returned here (no request is made);
 * errors of the allreduce itself are returned by frugal_wait. */
FRUGAL_API frugal_status frugal_allreduce_async(frugal_comm* comm, float* buf, size_t count,
                                                const frugal_options* options,
                                                frugal_request** request);

/* Sets *done to 1 if the allreduce has finished (successfully or not), else 0. Never blocks. */
FRUGAL_API frugal_status frugal_test(const frugal_request* request, int* done);

/* Blocks until the allreduce has finished, releases the request, sets *request to NULL and
 * returns the allreduce's status (its message via frugal_last_error_message on this thread). */
FRUGAL_API frugal_status frugal_wait(frugal_request** request);

/* Releases a request without waiting. The allreduce still runs to completion, so its buffer
 * must stay valid until the communicator is destroyed. NULL is ignored. */
FRUGAL_API void frugal_request_free(frugal_request* request);

/* ---- per-buffer state (error feedback) --------------------------------------------------- */

/* State of one buffer's compressed allreduces: the worker- and server-side error-feedback
 * residuals and the step counter that keys the random streams. One per buffer, used with one
 * layout (count, ranks, rank, method, op, top-k's k, error feedback on or off);
 * FRUGAL_ERR_MISMATCH naming what changed if reused with another until frugal_state_reset.
 * `decay` in [0, 1] scales the residual before it is added back. */
FRUGAL_API frugal_status frugal_state_create(float decay, frugal_state** out);
FRUGAL_API void frugal_state_destroy(frugal_state* state); /* NULL is ignored */
/* Forgets residuals and layout (e.g. after a skipped step); keeps the step counter. */
FRUGAL_API frugal_status frugal_state_reset(frugal_state* state);
FRUGAL_API frugal_status frugal_state_steps(const frugal_state* state, uint64_t* steps);

/* Checkpointing: *size = the bytes frugal_state_save will write now. */
FRUGAL_API frugal_status frugal_state_save_size(const frugal_state* state, size_t* size);
/* Writes the state's self-describing image into buf[0..capacity); *written = its size.
 * FRUGAL_ERR_INVALID_ARGUMENT (nothing written) if capacity is smaller than the image. */
FRUGAL_API frugal_status frugal_state_save(const frugal_state* state, void* buf, size_t capacity,
                                           size_t* written);
/* Restores an image written by frugal_state_save. FRUGAL_ERR_INVALID_ARGUMENT on a malformed
 * image; the state is unchanged then. */
FRUGAL_API frugal_status frugal_state_load(frugal_state* state, const void* buf, size_t size);

/* ---- gradient buckets -------------------------------------------------------------------- */

/* Gradient fusion with overlap (PyTorch DDP style): register a model's tensors once, in the
 * order backward produces their gradients; each step mark them ready as they are produced (a
 * full bucket starts its allreduce on the background thread at once), then finish. Each bucket
 * keeps its own error-feedback state (options->state is ignored). */
typedef struct frugal_buckets frugal_buckets;

/* `bucket_bytes`: fuse tensors into buckets of about this size (0: 25 MiB). `options` may be
 * NULL (dense sum). The communicator must outlive the buckets. */
FRUGAL_API frugal_status frugal_buckets_create(frugal_comm* comm, const frugal_options* options,
                                               size_t bucket_bytes, frugal_buckets** out);
/* Waits for allreduces still running (errors are dropped), then releases. NULL is ignored. */
FRUGAL_API void frugal_buckets_destroy(frugal_buckets* buckets);
/* Registers a tensor of `count` floats under a unique non-empty `name` (copied); *id (may be
 * NULL) receives its index. Only before the first mark_ready. */
FRUGAL_API frugal_status frugal_buckets_add(frugal_buckets* buckets, const char* name, size_t count,
                                            size_t* id);
/* frugal_buckets_add for a tensor of `ndim` dimensions: with options->dense_vectors (the
 * default) and a compression method, a tensor of ndim <= 1 goes in a dense bucket of its own and
 * is reduced exactly. frugal_buckets_add registers a tensor as a matrix (compressed). */
FRUGAL_API frugal_status frugal_buckets_add_tensor(frugal_buckets* buckets, const char* name,
                                                   size_t count, size_t ndim, size_t* id);
/* Hands over tensor `id`'s gradient (`count` must equal the registered size). It is copied
 * now; frugal_buckets_finish writes the reduced result back into `grad`, which must stay valid
 * until then. */
FRUGAL_API frugal_status frugal_buckets_mark_ready(frugal_buckets* buckets, size_t id, float* grad,
                                                   size_t count);
/* Waits for every bucket and writes the results back. FRUGAL_ERR_INVALID_ARGUMENT naming a
 * tensor that was not marked ready. Ready for the next step afterwards. */
FRUGAL_API frugal_status frugal_buckets_finish(frugal_buckets* buckets);
/* *skipped = 1 when the last frugal_buckets_finish skipped the step on every rank
 * (options->non_finite FRUGAL_NON_FINITE_SKIP and some rank's gradient held NaN/Inf; the
 * gradients keep their input), else 0. */
FRUGAL_API frugal_status frugal_buckets_last_step_skipped(const frugal_buckets* buckets,
                                                          int* skipped);
/* *bytes = the bytes this rank sent in the last frugal_buckets_finish's allreduces (agreement
 * blocks included; with options->hierarchical, the steps between hosts only); 0 before the
 * first. */
FRUGAL_API frugal_status frugal_buckets_last_step_wire_bytes(const frugal_buckets* buckets,
                                                             size_t* bytes);
/* Number of buckets (0 until the first mark_ready fixes the layout). */
FRUGAL_API frugal_status frugal_buckets_count(const frugal_buckets* buckets, size_t* count);

/* One change of a bucket's setting decided by the guardrail, identical on every rank. Version 1;
 * the caller sets struct_size = sizeof(frugal_guardrail_event) and the library writes no more
 * than that (fields are only appended). */
typedef struct frugal_guardrail_event {
  size_t struct_size;
  uint64_t step;         /* the buckets' reduced steps so far, this one included (1-based) */
  size_t bucket;         /* bucket index, as frugal_buckets_count counts them */
  size_t from_rung;      /* 0: the configured setting */
  size_t to_rung;        /* the new setting applies from the next step on */
  const char* from;      /* the settings' names: "onebit", "fp16", "topk(density=0.04)", */
  const char* to;        /* "qsgd(bits=8)", "dense"; owned by the buckets, valid until the next
                            frugal_buckets_finish or frugal_buckets_destroy */
  double ratio;          /* the smoothed residual ratio that decided it */
  double relative_error; /* the smoothed relative error of the compression (for logs) */
} frugal_guardrail_event;

/* *count = the changes the last frugal_buckets_finish decided (0 with the guardrail off, before
 * the first finish, or for a skipped step). */
FRUGAL_API frugal_status frugal_buckets_guardrail_event_count(const frugal_buckets* buckets,
                                                              size_t* count);
/* Change `index` (< the count above) into *event, whose struct_size the caller has set. */
FRUGAL_API frugal_status frugal_buckets_guardrail_event(const frugal_buckets* buckets, size_t index,
                                                        frugal_guardrail_event* event);
/* Bucket `bucket`'s place on its ladder: *rung (0: the configured setting; always 0 with the
 * guardrail off and for dense buckets), *ratio (the smoothed ratio at this rung; 0 before its
 * first observation) and *method (the frugal_method it compresses with at the next step). Each
 * output may be NULL. FRUGAL_ERR_INVALID_ARGUMENT for a bucket >= frugal_buckets_count. */
FRUGAL_API frugal_status frugal_buckets_guardrail_bucket(const frugal_buckets* buckets,
                                                         size_t bucket, size_t* rung, double* ratio,
                                                         int* method);
/* One move of compression = auto, identical on every rank: a trial moving a bucket on to its
 * next candidate, or the trial's decision. Version 1; the caller sets struct_size =
 * sizeof(frugal_autotune_event) and the library writes no more than that. */
typedef struct frugal_autotune_event {
  size_t struct_size;
  uint64_t step; /* the buckets' reduced steps so far, this one included (1-based) */
  size_t bucket; /* bucket index, as frugal_buckets_count counts them */
  /* The candidates' names ("dense", "fp16", "ternary", "topk(density=0.01)"), equal at a
   * decision that keeps the candidate; the new one applies from the next step on. Owned by the
   * buckets, valid until the next frugal_buckets_finish or frugal_buckets_destroy. */
  const char* from;
  const char* to;
  int decision; /* 1: the end of a trial; 0: the trial moves on to the next candidate */
  /* At a decision: each candidate's agreed cost (the median over its trial steps of the max
   * over the ranks: seconds, or the cost callback's unit), in candidate order; owned like
   * `from`. Otherwise NULL with cost_count 0. */
  const double* costs;
  size_t cost_count;
} frugal_autotune_event;

/* *count = the moves and decisions of the last frugal_buckets_finish (0 with auto off, before
 * the first finish, for a skipped step, or when nothing changed). */
FRUGAL_API frugal_status frugal_buckets_autotune_event_count(const frugal_buckets* buckets,
                                                             size_t* count);
/* Event `index` (< the count above) into *event, whose struct_size the caller has set. */
FRUGAL_API frugal_status frugal_buckets_autotune_event(const frugal_buckets* buckets, size_t index,
                                                       frugal_autotune_event* event);
/* *candidate = the index (into the autotune candidates) of the candidate bucket `bucket` runs at
 * the next step. FRUGAL_ERR_INVALID_ARGUMENT with auto off, for a dense bucket (dense_vectors)
 * and for a bucket >= frugal_buckets_count. */
FRUGAL_API frugal_status frugal_buckets_autotune_bucket(const frugal_buckets* buckets,
                                                        size_t bucket, size_t* candidate);
/* Error-feedback state of every bucket, as for frugal_state_save_size / _save / _load. */
FRUGAL_API frugal_status frugal_buckets_state_size(const frugal_buckets* buckets, size_t* size);
FRUGAL_API frugal_status frugal_buckets_state_save(const frugal_buckets* buckets, void* buf,
                                                   size_t capacity, size_t* written);
FRUGAL_API frugal_status frugal_buckets_state_load(frugal_buckets* buckets, const void* buf,
                                                   size_t size);

/* ---- PowerSGD ---------------------------------------------------------------------------- */
/* Low-rank compression (Vogels et al. 2019) of a list of tensors, each viewed as a matrix of
 * rows x cols (first dimension by the rest): rank-r power iteration with a warm start, error
 * feedback, a minimum compression rate below which a tensor travels exactly (every 1-D tensor
 * does), and exact first steps. Two dense allreduces per step plus a small agreement
 * (docs/powersgd.md). Since libfrugal 0.4. */
typedef struct frugal_powersgd_state frugal_powersgd_state;

/* Version 1. Same ABI rules as frugal_options: fields are only appended, struct_size says which
 * version the caller compiled against; always start from frugal_powersgd_options_init(). */
typedef struct frugal_powersgd_options {
  size_t struct_size;          /* sizeof(frugal_powersgd_options); set by the init call */
  int rank;                    /* rank r of the approximation, >= 1; default 1 */
  double min_compression_rate; /* compress when (rows + cols) r rate < rows cols; >= 1;
                                  default 2 (PyTorch's) */
  uint64_t start_iter;         /* steps reduced exactly first; default 10 */
  uint64_t seed;               /* initial Q's draws, identical on every rank; default 0 */
  int error_feedback;          /* nonzero: keep what the approximation missed; default 1 */
  int op;                      /* frugal_op; default FRUGAL_OP_AVERAGE */
  int non_finite;              /* frugal_non_finite; DEFAULT behaves as ERROR */
  int64_t timeout_ms;          /* per-wait bound for this call; <= 0: the communicator's */
  int* skipped;                /* if not NULL: 1 when every rank skipped the step under
                                  FRUGAL_NON_FINITE_SKIP, else 0. Not owned. */
} frugal_powersgd_options;

/* Fills `options` with the defaults above for a struct of `struct_size` bytes. */
FRUGAL_API frugal_status frugal_powersgd_options_init_sized(frugal_powersgd_options* options,
                                                            size_t struct_size);
static inline frugal_status frugal_powersgd_options_init(frugal_powersgd_options* options) {
  return frugal_powersgd_options_init_sized(options, sizeof(frugal_powersgd_options));
}

/* One gradient tensor: `data` holds rows * cols floats, row-major (may be NULL only when that is
 * 0). A 1-D tensor of n elements is rows = n, cols = 1. */
typedef struct frugal_powersgd_tensor {
  float* data;
  size_t rows;
  size_t cols;
} frugal_powersgd_tensor;

/* *compresses = 1 when a rows x cols tensor is compressed with `options` (NULL: defaults). */
FRUGAL_API frugal_status frugal_powersgd_compresses(size_t rows, size_t cols,
                                                    const frugal_powersgd_options* options,
                                                    int* compresses);

/* The per-rank state of one tensor list: step counter, each compressed tensor's Q (warm start)
 * and residual. Bound to its layout (shapes, ranks, rank, r, op, min_compression_rate, error
 * feedback) by the first allreduce; another layout afterwards is FRUGAL_ERR_MISMATCH on every
 * rank until frugal_powersgd_state_reset. */
FRUGAL_API frugal_status frugal_powersgd_state_create(frugal_powersgd_state** out);
FRUGAL_API void frugal_powersgd_state_destroy(frugal_powersgd_state* state); /* NULL ignored */
/* Forgets layout, Q's and residuals; keeps the step counter. */
FRUGAL_API frugal_status frugal_powersgd_state_reset(frugal_powersgd_state* state);
FRUGAL_API frugal_status frugal_powersgd_state_steps(const frugal_powersgd_state* state,
                                                     uint64_t* steps);
/* Checkpointing, as frugal_state_save_size / _save / _load: each rank saves its own. A
 * malformed or corrupted image (it is checksummed) is FRUGAL_ERR_INVALID_ARGUMENT and leaves
 * the state unchanged. */
FRUGAL_API frugal_status frugal_powersgd_state_save_size(const frugal_powersgd_state* state,
                                                         size_t* size);
FRUGAL_API frugal_status frugal_powersgd_state_save(const frugal_powersgd_state* state, void* buf,
                                                    size_t capacity, size_t* written);
FRUGAL_API frugal_status frugal_powersgd_state_load(frugal_powersgd_state* state, const void* buf,
                                                    size_t size);

/* Reduces the `count` tensors in place: afterwards every rank holds bit-identical values, the
 * rank-r approximation of the mean (or sum) of each compressed tensor and the exact mean (or
 * sum) of the others. Every rank must pass the same shapes and options and a state at the same
 * step: they agree first, and a disagreement (or a state bound to another layout) is
 * FRUGAL_ERR_MISMATCH on every rank with nothing changed. `tensors` may be NULL only when count
 * is 0; `options` may be NULL (the defaults). */
FRUGAL_API frugal_status frugal_powersgd_allreduce(frugal_comm* comm,
                                                   const frugal_powersgd_tensor* tensors,
                                                   size_t count, frugal_powersgd_state* state,
                                                   const frugal_powersgd_options* options);

/* ---- compressed reduce-scatter and allgather (sharded optimizers) ---------------------- */

/* The shard of a `count`-element buffer that `rank` of `ranks` owns: elements
 * [*offset, *offset + *shard_count), the even split in rank order (sizes differ by at most one,
 * the larger first) that frugal_reduce_scatter and frugal_allgather use, whatever the segments.
 * FRUGAL_ERR_INVALID_ARGUMENT unless ranks >= 1 and 0 <= rank < ranks. */
FRUGAL_API frugal_status frugal_shard_range(size_t count, int ranks, int rank, size_t* offset,
                                            size_t* shard_count);

/* Compressed reduce-scatter, phase one of the two-phase allreduce: afterwards `output`
 * (output_count floats, which must be this rank's frugal_shard_range of `count`) holds the sum
 * (or mean) over all ranks of what each rank's compressed `input` decodes to for that shard.
 * `input` (count floats) is used as scratch: its contents afterwards are unspecified. `output`
 * may be input's own shard or lie outside `input`. options->method NONE is the exact dense
 * reduce-scatter; the quantizers (fp16, bf16, 1-bit, ternary, QSGD) run compressed with
 * options->state keeping the worker residual; top-k is FRUGAL_ERR_INVALID_ARGUMENT, as is an
 * algorithm other than AUTO, TWO_PHASE (compressed) or RING (dense). A state serves one
 * collective: one used by an allreduce or an allgather is FRUGAL_ERR_MISMATCH. Bad arguments on
 * one rank: FRUGAL_ERR_INVALID_ARGUMENT there and FRUGAL_ERR_MISMATCH on the others (the
 * communicator is failed then). `options` may be NULL (dense sum). */
FRUGAL_API frugal_status frugal_reduce_scatter(frugal_comm* comm, float* input, size_t count,
                                               float* output, size_t output_count,
                                               const frugal_options* options);

/* Compressed allgather, phase two of the two-phase allreduce: every rank's `shard`
 * (shard_count floats, its frugal_shard_range of `count`) is compressed (options->state keeps
 * its residual) and decoded into every rank's `output` (count floats), bit-identical on every
 * rank. options->op is ignored; NON_FINITE_ZERO is FRUGAL_ERR_INVALID_ARGUMENT (the shard is
 * read-only). frugal_reduce_scatter into a buffer's own shard followed by frugal_allgather of
 * it, each with its own state, equals frugal_allreduce with TWO_PHASE bit for bit. */
FRUGAL_API frugal_status frugal_allgather(frugal_comm* comm, const float* shard, size_t shard_count,
                                          float* output, size_t count,
                                          const frugal_options* options);

#ifdef __cplusplus
}
#endif

#endif /* FRUGAL_FRUGAL_H */
