# Sourced by the frugal-train shell tests once they have set `train`: a temporary directory
# removed on exit, fail, Open MPI allowed to run as root, and expect_usage_error.
python=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# A fault left in the environment by the caller would kill the tests' own runs.
unset FRUGAL_FAULT_INJECT

# expect_usage_error PATTERN ARGS...: frugal-train ARGS exits 2 (a usage error, found before any
# MPI or data work) with a message that contains PATTERN.
expect_usage_error() {
  local pattern=$1
  shift
  local rc=0 msg
  msg=$("$train" "$@" 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "$* exited $rc, expected 2 ($msg)"
  grep -q -- "$pattern" <<<"$msg" || fail "$*: message '$msg' does not mention '$pattern'"
}
