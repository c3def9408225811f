#!/bin/bash
# Which ELF files may load a library: fails if any file after --without needs one whose name
# starts with PATTERN, directly (a NEEDED entry, readelf -d) or through its dependencies (ldd).
# The files after --with must need it directly: they show that the check can see the library at
# all, so a broken readelf or a renamed library cannot make the test pass by seeing nothing.
#
# Usage: needed_test.sh PATTERN --with FILE... --without FILE...
set -euo pipefail
if [[ $# -lt 4 || $2 != --with ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
pattern=$1
shift 2
with=() without=()
while (($# > 0)) && [[ $1 != --without ]]; do with+=("$1"); shift; done
[[ ${1:-} == --without ]] || { echo "needed-test: missing --without" >&2; exit 2; }
shift
without=("$@")
((${#with[@]} > 0 && ${#without[@]} > 0)) || { echo "needed-test: empty file list" >&2; exit 2; }

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

# The direct dependencies of $1 through which it loads a PATTERN library.
through() {
  local n path
  for n in $(needed "$1"); do
    path=$(ldd "$1" | awk -v n="$n" '$1 == n {print $3}')
    if [[ -n $path ]] && ldd "$path" | awk -v p="$pattern" 'index($1, p) == 1 {f = 1} END {exit !f}'; then
      echo "$n"
    fi
  done
}

status=0
for f in "${with[@]}"; do
  [[ -f $f ]] || { echo "needed-test: $f does not exist" >&2; exit 2; }
  if needed "$f" | grep -q "^$pattern"; then
    echo "ok: $(basename "$f") needs $pattern (as it must)"
  else
    echo "FAIL: $(basename "$f") does not need $pattern, so this check cannot see it:" \
      "$(needed "$f" | tr '\n' ' ')"
    status=1
  fi
done
for f in "${without[@]}"; do
  [[ -f $f ]] || { echo "needed-test: $f does not exist" >&2; exit 2; }
  direct=$(needed "$f" | grep "^$pattern" || true)
  loaded=$(ldd "$f" | awk -v p="$pattern" 'index($1, p) == 1 {print $1}' || true)
  if [[ -n $direct ]]; then
    echo "FAIL: $(basename "$f") needs $direct (NEEDED)"
    status=1
  elif [[ -n $loaded ]]; then
    chain=$(through "$f" | tr '\n' ' ')
    echo "FAIL: $(basename "$f") loads $(echo "$loaded" | tr '\n' ' ')through: $chain"
    status=1
  else
    echo "ok: $(basename "$f") does not load $pattern"
  fi
done
exit "$status"
