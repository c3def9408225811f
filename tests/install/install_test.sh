#!/bin/bash
# Installs the build into a temporary DESTDIR (never the real prefix), checks the installed
# files, builds out-of-tree C and C++ consumers against it with pkg-config (shared and static)
# and with CMake's find_package(frugal) (shared and static), and runs each under mpirun -np 2.
#
# Usage: install_test.sh BUILD_DIR SOURCE_DIR PREFIX LIBDIR INCLUDEDIR BINDIR WITH_BENCH WITH_UCX
set -euo pipefail
if [[ ${1:-} == --help || $# -ne 8 ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  [[ ${1:-} == --help ]] && exit 0 || exit 2
fi
unset LD_LIBRARY_PATH  # what runs must find the installed libraries by itself
build=$1 source=$2 prefix=$3 libdir=$4 includedir=$5 bindir=$6 with_bench=$7 with_ucx=$8
work=$build/tests/install/work
rm -rf "$work"
mkdir -p "$work"
destdir=$work/destdir
root=$destdir$prefix
lib=$root/$libdir
inc=$root/$includedir

fail() { echo "install-test: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "meson install --destdir $destdir"
meson install -C "$build" --no-rebuild --destdir "$destdir" --quiet >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "meson install"; }

step "installed files"
for f in "$inc/frugal/frugal.h" "$inc/frugal/frugal_mpi.h" "$inc/frugal/version.h" \
         "$inc/frugal/communicator.hpp" "$inc/frugal/mpi.hpp" "$inc/frugal/bootstrap.hpp" \
         "$inc/frugal/tcp_store.hpp" "$inc/frugal/ucx_mpi.hpp" \
         "$inc/frugal/collectives/allreduce.hpp" "$inc/frugal/collectives/buckets.hpp" \
         "$inc/frugal/compression/compressor.hpp" \
         "$lib/pkgconfig/frugal.pc" "$lib/cmake/frugal/frugalConfig.cmake" \
         "$lib/cmake/frugal/frugalConfigVersion.cmake"; do
  [[ -f $f ]] || fail "missing $f"
done
libs=(frugal frugal_collectives frugal_compression frugal_mpi frugal_core)
[[ $with_ucx == true ]] && libs+=(frugal_ucx) && { [[ -f $inc/frugal/ucx.hpp ]] || fail "missing ucx.hpp"; }
for l in "${libs[@]}"; do
  [[ -f $lib/lib$l.a ]] || fail "missing static lib$l.a"
  [[ -e $lib/lib$l.so ]] || fail "missing shared lib$l.so"
done
[[ -e $lib/libfrugal.so.0 ]] || fail "missing libfrugal.so.0 (soname link)"
if [[ $with_bench == true ]]; then
  [[ -x $root/$bindir/frugal-bench ]] || fail "missing $bindir/frugal-bench"
fi
# Every installed program (frugal-bench, frugal-train, ...) starts from the installed tree: it
# finds frugal's libraries through its install rpath ($ORIGIN/../libdir) and answers --help.
for program in "$root/$bindir"/*; do
  [[ -e $program ]] || continue
  timeout 30 "$program" --help >/dev/null 2>&1 || fail "installed $(basename "$program") --help"
  echo "   $(basename "$program") --help: OK"
done
# Every installed header compiles on its own (nothing it includes was left uninstalled), and only
# the MPI layer's headers include mpi.h.
mpi_cflags=$(pkg-config --cflags ompi-c)
mpi_headers=" frugal/mpi.hpp frugal/ucx_mpi.hpp "
for h in $(cd "$inc" && find frugal -name '*.hpp'); do
  echo "#include \"$h\"" | c++ -std=c++20 -fsyntax-only -DOMPI_SKIP_MPICXX=1 -I"$inc" \
    $mpi_cflags -x c++ - || fail "installed header $h does not compile on its own"
  if [[ $mpi_headers != *" $h "* ]]; then
    includes=$(echo "#include \"$h\"" | c++ -std=c++20 -M -DOMPI_SKIP_MPICXX=1 -I"$inc" \
      $mpi_cflags -x c++ -)
    if grep -q '/mpi\.h\b' <<<"$includes"; then fail "installed header $h includes mpi.h"; fi
  fi
done
# frugal.h needs nothing but itself: no MPI flags here.
cc -std=c99 -Wall -Wextra -Werror -pedantic -I"$inc" -c "$source/tests/capi/consumer.c" \
  -o "$work/consumer-nompi.o" || fail "frugal.h alone"

run() {  # name binary [args]: mpirun -np 2, both ranks must print OK
  local name=$1; shift
  local out
  out=$(mpirun --allow-run-as-root --oversubscribe -np 2 "$@" 2>&1) ||
    { echo "$out"; fail "$name exited non-zero"; }
  for r in 0 1; do
    grep -q "OK rank $r of 2" <<<"$out" || { echo "$out"; fail "$name: rank $r did not report OK"; }
  done
  echo "   $name: $(grep -c 'OK rank' <<<"$out") ranks OK"
}

# Build directories made before frugal set pkgconfig.relocatable in its default_options keep the
# old value, and a fixed prefix cannot point into a DESTDIR without also moving MPI's paths.
grep -q '^prefix=${pcfiledir}' "$lib/pkgconfig/frugal.pc" ||
  fail "frugal.pc is not relocatable: run 'meson configure $build -Dpkgconfig.relocatable=true'"
export PKG_CONFIG_PATH=$lib/pkgconfig
pc() { pkg-config "$@" frugal; }  # frugal.pc is relocatable: no prefix override needed

step "pkg-config: $(pc --modversion), $(pc --cflags --libs)"
version=$(meson introspect "$build" --projectinfo | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
[[ $(pc --modversion) == "$version" ]] ||
  fail "frugal.pc version differs from the project version"
cc -std=c99 -Wall -Wextra -Werror -pedantic "$source/tests/capi/consumer.c" -o "$work/c-pc" \
  $(pc --cflags --libs) -lm -Wl,-rpath,"$lib"
# Output captured before grep: with pipefail, grep -q leaving early could SIGPIPE the writer and
# fail (or, in an if, pass) the check at random.
loaded=$(ldd "$work/c-pc")
grep -q "libfrugal.so.0 => $lib/libfrugal.so.0" <<<"$loaded" ||
  fail "c-pc does not load the installed libfrugal: $(grep frugal <<<"$loaded")"
run c-pkgconfig "$work/c-pc"
c++ -std=c++20 -Wall -Wextra "$source/tests/install/consumer.cpp" -o "$work/cpp-pc" \
  $(pc --cflags --libs) -Wl,-rpath,"$lib"
run cpp-pkgconfig "$work/cpp-pc"

# Static: frugal's own libraries from the .a files (the linker prefers .so, hence -Bstatic
# around them), everything else as pkg-config --static says. A C program, so the C++ runtime
# must come from the .pc file too.
static_flags=()
for flag in $(pc --static --libs); do
  if [[ $flag == -lfrugal* ]]; then
    static_flags+=(-Wl,-Bstatic "$flag" -Wl,-Bdynamic)
  else
    static_flags+=("$flag")
  fi
done
cc -std=c99 -Wall -Wextra -Werror -pedantic "$source/tests/capi/consumer.c" -o "$work/c-pc-static" \
  $(pc --cflags) "${static_flags[@]}"
if grep -q 'NEEDED.*libfrugal' <<<"$(readelf -d "$work/c-pc-static")"; then
  fail "c-pc-static still needs a shared libfrugal"
fi
run c-pkgconfig-static "$work/c-pc-static"

for kind in shared static; do
  step "CMake find_package(frugal), $kind"
  static=OFF
  [[ $kind == static ]] && static=ON
  cmake -S "$source/tests/install/cmake_consumer" -B "$work/cmake-$kind" \
    -DCMAKE_PREFIX_PATH="$root" -DFRUGAL_USE_STATIC_LIBS=$static \
    -DCONSUMER_SOURCES="$source/tests/install" -DCMAKE_BUILD_TYPE=Release \
    -DFRUGAL_REQUESTED_VERSION="${version%.*}" \
    >"$work/cmake-$kind.log" 2>&1 || { cat "$work/cmake-$kind.log"; fail "cmake configure ($kind)"; }
  cmake --build "$work/cmake-$kind" -j 2 >>"$work/cmake-$kind.log" 2>&1 ||
    { cat "$work/cmake-$kind.log"; fail "cmake build ($kind)"; }
  if [[ $kind == static ]] &&
     grep -q 'NEEDED.*libfrugal' <<<"$(readelf -d "$work/cmake-$kind/consumer_cpp")"; then
    fail "static CMake consumer still needs a shared libfrugal"
  fi
  run "c-cmake-$kind" "$work/cmake-$kind/consumer_c"
  run "cpp-cmake-$kind" "$work/cmake-$kind/consumer_cpp"
done

# A version the package does not satisfy is refused.
mkdir -p "$work/cmake-version"
cat >"$work/cmake-version/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(v LANGUAGES C)
find_package(frugal 99.0 REQUIRED)
CMAKE
if cmake -S "$work/cmake-version" -B "$work/cmake-version/b" -DCMAKE_PREFIX_PATH="$root" \
    >"$work/cmake-version.log" 2>&1; then
  fail "find_package(frugal 99.0) succeeded"
fi
grep -q "version: $version" "$work/cmake-version.log" || fail "no version mismatch message naming the installed version"

echo "install-test: all OK"
