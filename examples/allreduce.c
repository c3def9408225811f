/* frugal's C API over MPI (no mpi.h needed): a dense sum (exact), then a compressed average
 * (QSGD, 4 bits). Run: mpirun -np 2 example-allreduce-c. Exits 1 if either result is off. */
#include <stdio.h>

#include "frugal/frugal.h"

#define CHECK(call)                                                    \
  do {                                                                 \
    if ((call) != FRUGAL_OK) {                                         \
      fprintf(stderr, "%s: %s\n", #call, frugal_last_error_message()); \
      return 1;                                                        \
    }                                                                  \
  } while (0)
#define N (1 << 20)
static float buf[N];

int main(void) {
  frugal_comm* comm;
  int rank, size, exact = 1;
  CHECK(frugal_comm_create_mpi_world(FRUGAL_TRANSPORT_MPI, &comm)); /* initialises MPI */
  CHECK(frugal_comm_rank(comm, &rank));
  CHECK(frugal_comm_size(comm, &size));

  for (int i = 0; i < N; ++i) buf[i] = (float)(rank + 1);
  CHECK(frugal_allreduce(comm, buf, N, NULL)); /* every element: 1 + 2 + ... + size */
  for (int i = 0; i < N; ++i) exact = exact && buf[i] == size * (size + 1) / 2;

  frugal_state* state; /* error feedback: what compression dropped, added next time */
  CHECK(frugal_state_create(1.0f, &state));
  frugal_options options;
  CHECK(frugal_options_init(&options));
  options.method = FRUGAL_METHOD_QSGD;
  options.op = FRUGAL_OP_AVERAGE;
  options.state = state;
  for (int i = 0; i < N; ++i) buf[i] = 0.5f * (float)(rank + 1);
  CHECK(frugal_allreduce(comm, buf, N, &options));
  double mean = 0, expected = 0.25 * (size + 1); /* QSGD is unbiased: the mean survives */
  for (int i = 0; i < N; ++i) mean += buf[i] / (double)N;

  printf("rank %d of %d: dense sum %s, compressed mean %.4f (expected %.4f)\n", rank, size,
         exact ? "exact" : "WRONG", mean, expected);
  frugal_state_destroy(state);
  frugal_comm_destroy(comm);
  return exact && mean > 0.99 * expected && mean < 1.01 * expected ? 0 : 1;
}
