/* A C99 program using frugal's C API the way a trainer written in C would. Built in-tree with
 * -std=c99 -Wall -Wextra -Werror -pedantic, and out of tree against an installed frugal by the
 * install test. Includes only frugal.h (no mpi.h). Run under mpirun: exits 0 if every check
 * holds on this rank, 1 otherwise, and prints "consumer-c OK rank R of P" on success.
 *
 * Usage: consumer [mpi|ucx|env]   (default mpi: MPI_COMM_WORLD; env: scripts/launch) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frugal/frugal.h"

static int failures = 0;

#define CHECK(condition)                                                                  \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      fprintf(stderr, "consumer-c: %s:%d: check failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #condition, frugal_last_error_message());                         \
      ++failures;                                                                         \
    }                                                                                     \
  } while (0)

#define N 1000

int main(int argc, char** argv) {
  const char* transport = argc > 1 ? argv[1] : "mpi";
  frugal_comm* comm = NULL;
  frugal_status status;
  int rank = -1, size = 0, i, step;
  static float buf[N], again[N];
  frugal_options options;
  frugal_request* request = NULL;
  frugal_state* state = NULL;
  frugal_state* restored = NULL;
  size_t image_size = 0, written = 0;
  void* image;
  static float matrix[40 * 25], vector[10];
  frugal_powersgd_tensor tensors[2];
  frugal_powersgd_options powersgd;
  frugal_powersgd_state* powersgd_state = NULL;
  uint64_t powersgd_steps = 0;

  if (argc > 1 && strcmp(argv[1], "--help") == 0) {
    printf("usage: %s [mpi|ucx|env]\n", argv[0]);
    return 0;
  }
  CHECK(frugal_version() == FRUGAL_VERSION);
  if (strcmp(transport, "env") == 0) {
    status = frugal_comm_create_env(&comm);
  } else {
    status = frugal_comm_create_mpi_world(
        strcmp(transport, "ucx") == 0 ? FRUGAL_TRANSPORT_UCX : FRUGAL_TRANSPORT_MPI, &comm);
  }
  if (status != FRUGAL_OK) {
    fprintf(stderr, "consumer-c: cannot create a communicator: %s: %s\n",
            frugal_status_string(status), frugal_last_error_message());
    return 1;
  }
  CHECK(frugal_comm_rank(comm, &rank) == FRUGAL_OK);
  CHECK(frugal_comm_size(comm, &size) == FRUGAL_OK);

  /* Dense sum of integers: exact. */
  for (i = 0; i < N; ++i) buf[i] = (float)(rank + 1) * (float)(i % 7);
  CHECK(frugal_allreduce(comm, buf, N, NULL) == FRUGAL_OK);
  for (i = 0; i < N; ++i) CHECK(buf[i] == (float)(size * (size + 1) / 2) * (float)(i % 7));

  /* Average, asynchronously. */
  CHECK(frugal_options_init(&options) == FRUGAL_OK);
  options.op = FRUGAL_OP_AVERAGE;
  for (i = 0; i < N; ++i) buf[i] = (float)(2 * rank);
  CHECK(frugal_allreduce_async(comm, buf, N, &options, &request) == FRUGAL_OK);
  CHECK(frugal_wait(&request) == FRUGAL_OK);
  CHECK(request == NULL);
  for (i = 0; i < N; ++i) CHECK(buf[i] == (float)(size - 1));

  /* 1-bit with error feedback; a checkpointed copy of the state must continue identically. */
  CHECK(frugal_state_create(1.0f, &state) == FRUGAL_OK);
  CHECK(frugal_state_create(1.0f, &restored) == FRUGAL_OK);
  CHECK(frugal_options_init(&options) == FRUGAL_OK);
  options.method = FRUGAL_METHOD_ONEBIT;
  options.state = state;
  for (step = 0; step < 3; ++step) {
    for (i = 0; i < N; ++i) buf[i] = sinf((float)(i + 31 * rank + step));
    CHECK(frugal_allreduce(comm, buf, N, &options) == FRUGAL_OK);
    for (i = 0; i < N; ++i) CHECK(isfinite(buf[i]) && fabsf(buf[i]) <= 2.0f * (float)size);
  }
  CHECK(frugal_state_save_size(state, &image_size) == FRUGAL_OK);
  CHECK(image_size > N * sizeof(float)); /* holds the worker residual */
  image = malloc(image_size);
  CHECK(image != NULL);
  CHECK(frugal_state_save(state, image, image_size - 1, &written) == FRUGAL_ERR_INVALID_ARGUMENT);
  CHECK(written == image_size);
  CHECK(frugal_state_save(state, image, image_size, &written) == FRUGAL_OK);
  CHECK(frugal_state_load(restored, image, written) == FRUGAL_OK);
  for (i = 0; i < N; ++i) buf[i] = again[i] = cosf((float)(i + rank));
  CHECK(frugal_allreduce(comm, buf, N, &options) == FRUGAL_OK);
  options.state = restored;
  CHECK(frugal_allreduce(comm, again, N, &options) == FRUGAL_OK);
  CHECK(memcmp(buf, again, sizeof buf) == 0);
  free(image);

  /* PowerSGD, rank 2, compressed from the first step: the vector travels exactly. */
  CHECK(frugal_powersgd_options_init(&powersgd) == FRUGAL_OK);
  powersgd.rank = 2;
  powersgd.start_iter = 0;
  powersgd.op = FRUGAL_OP_SUM;
  CHECK(frugal_powersgd_state_create(&powersgd_state) == FRUGAL_OK);
  tensors[0].data = matrix;
  tensors[0].rows = 40;
  tensors[0].cols = 25;
  tensors[1].data = vector;
  tensors[1].rows = 10;
  tensors[1].cols = 1;
  for (step = 0; step < 3; ++step) {
    for (i = 0; i < 40 * 25; ++i) matrix[i] = sinf((float)(i * i + 7 * rank + step));
    for (i = 0; i < 10; ++i) vector[i] = (float)(rank + 1) * (float)(i % 7);
    CHECK(frugal_powersgd_allreduce(comm, tensors, 2, powersgd_state, &powersgd) == FRUGAL_OK);
    for (i = 0; i < 40 * 25; ++i) CHECK(isfinite(matrix[i]));
    for (i = 0; i < 10; ++i) CHECK(vector[i] == (float)(size * (size + 1) / 2) * (float)(i % 7));
  }
  CHECK(frugal_powersgd_state_steps(powersgd_state, &powersgd_steps) == FRUGAL_OK);
  CHECK(powersgd_steps == 3);
  powersgd.rank = 0;
  CHECK(frugal_powersgd_allreduce(comm, tensors, 2, powersgd_state, &powersgd) ==
        FRUGAL_ERR_INVALID_ARGUMENT);
  CHECK(strstr(frugal_last_error_message(), "rank") != NULL);
  frugal_powersgd_state_destroy(powersgd_state);

  /* Errors are statuses with a message. */
  CHECK(frugal_allreduce(NULL, buf, N, NULL) == FRUGAL_ERR_INVALID_ARGUMENT);
  CHECK(strstr(frugal_last_error_message(), "comm is NULL") != NULL);
  options.bits = 3;
  options.method = FRUGAL_METHOD_QSGD;
  CHECK(frugal_allreduce(comm, buf, N, &options) == FRUGAL_ERR_INVALID_ARGUMENT);
  CHECK(strstr(frugal_last_error_message(), "bits") != NULL);

  frugal_state_destroy(state);
  frugal_state_destroy(restored);
  frugal_comm_destroy(comm);
  if (failures == 0) printf("consumer-c OK rank %d of %d\n", rank, size);
  return failures == 0 ? 0 : 1;
}
