# Shared plumbing for the cuemu driver scripts (run.sh, ops_run.sh, attn_run.sh, ...). Sourced, not
# run: a driver does
#
#   set -euo pipefail
#   . "$(dirname "$0")/lib.sh"            # cd to the repo root; strips a leading --quick (QUICK=1)
#   cuemu_init NAME "what is tested"      # OUT, SKIP without the CUDA headers (exit 0)
#   nvcc_start native/tests/cuemu/X_nvcc.cu DEPS...  # background nvcc + ptxas -v, cached in $OUT
#   build "$OUT/a.o" src.cpp DEPS...      # g++ -c with $FLAGS when a.o is older than a dependency
#   link "$OUT/x_test" "$OUT/a.o" ...
#   run_tests "$OUT/x_test" "$@"           # status=1 on failure (or when a build failed)
#   nvcc_finish                           # wait, print the per-kernel ptxas table; status=1 on spills
#   cuemu_exit                            # "total: N s", exit $status
#
# Environment (all optional):
#   OUT        build directory (default ${TMPDIR:-/tmp}/tachyon-cuemu-NAME)
#   CXX        host compiler for the emulated build (default g++)
#   CUDA_HOME  CUDA toolkit (default /usr/local/cuda); its headers are required, nvcc is not
#   NVCC       nvcc to use (default $CUDA_HOME/bin/nvcc); anything that is not an executable file
#              (e.g. NVCC=none) skips the nvcc compile check with a message
#   ARCHS      space-separated SM list for nvcc (default "80 89 90", as the addon build)
#
# The nvcc check is one nvcc call with one -gencode per arch (the host pass runs once), into
# $OUT/<src>_sm80-89-90.o with its log in $OUT/ptxas_sm80-89-90.log (copied to $OUT/ptxas.log);
# both are reused while the source and its dependencies are unchanged. It runs in the background
# while the g++ tests run: never start two drivers at once on a small machine.
#
# Run directly (bash native/tests/cuemu/lib.sh), it self-tests the ptxas summary on a fake log:
# a clean kernel must pass and a kernel with spill stores must fail.

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
# A leading --quick is accepted by every driver (CI passes it by name pattern). Sourcing without
# arguments shares the caller's positional parameters, so this shift removes it from the
# driver's "$@"; a driver with a quick mode reads QUICK, the others ignore it.
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; shift; fi

CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
ARCHS=${ARCHS:-"80 89 90"}
ARCHS=$(echo ${ARCHS//,/ })  # normalized: single spaces
# g++ flags for the emulated build: kernels and tests compile as plain C++17 against cuemu, with the
# CUDA headers for the fp16 / bf16 / fp8 types.
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
NVCC_FLAGS=()           # extra nvcc flags (a driver may add some before nvcc_start)
PTXAS_SED=''            # extra sed -E script for the demangled kernel names (ty::cuda:: already gone)
PTXAS_LEGEND=()         # lines printed under the table header
PTXAS_TABLE=1           # 0: no per-kernel table (the summary line and the spill check remain)
PTXAS_SPILLS_FAIL=1     # 0: a spill is reported but does not fail the script (test-only kernels)
status=0
BUILD_FAILED=0
NV_PID=''
t0=$(date +%s)

# cuemu_init NAME DESCRIPTION [HEADER...]: sets OUT and exits 0 with SKIPPED when a CUDA header
# (cuda_fp16.h and the HEADERs) is missing under $CUDA_HOME/include.
cuemu_init() {
  local name=$1 desc=$2 h missing=0; shift 2
  local hdrs=(cuda_fp16.h "$@")
  OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-$name}
  for h in "${hdrs[@]}"; do [ -f "$CUDA_HOME/include/$h" ] || missing=1; done
  if [ $missing = 1 ]; then
    local list="${hdrs[*]}"
    echo "$desc need the CUDA headers (${list// /, }) under \$CUDA_HOME/include; not found: SKIPPED"
    exit 0
  fi
  mkdir -p "$OUT"
}

# stale OUT DEP...: true when OUT is missing or older than a dependency
stale() {
  local o=$1 d; shift
  [ -f "$o" ] || return 0
  for d in "$@"; do [ "$d" -nt "$o" ] && return 0; done
  return 1
}

# build OBJ SRC DEP...: g++ -c with FLAGS; build_with ARRAY OBJ SRC DEP...: with the flags in the
# array named ARRAY. A failure is recorded (BUILD_FAILED=1, reported by run_tests) and the other
# objects are still built, so one run shows every compile error; the stale object is removed first
# so that a failed compile can never leave an old one to be linked.
build_with() {
  local -n bw_flags=$1
  local o=$2 s=$3; shift 3
  stale "$o" "$s" "$@" || return 0
  rm -f "$o"
  "$CXX" "${bw_flags[@]}" -c "$s" -o "$o" || { echo "g++ -c $s: FAILED"; BUILD_FAILED=1; }
}
build() { build_with FLAGS "$@"; }

# link BIN OBJ...: skipped after a failed build
link() {
  local bin=$1; shift
  [ $BUILD_FAILED = 0 ] || return 0
  rm -f "$bin"
  "$CXX" -rdynamic -o "$bin" "$@" -lpthread -ldl || { echo "link $bin: FAILED"; BUILD_FAILED=1; }
}

# run_tests BIN ARG...: runs the test binary; status=1 when it fails or the build failed
run_tests() {
  local bin=$1; shift
  if [ $BUILD_FAILED != 0 ]; then echo "g++ build FAILED"; status=1; return 0; fi
  echo "g++ build: $(( $(date +%s) - t0 )) s"
  local t1; t1=$(date +%s)
  "$bin" "$@" || status=1
  echo "tests: $(( $(date +%s) - t1 )) s"
}

nvcc_usable() {
  local p
  p=$(command -v -- "$NVCC" 2>/dev/null) || return 1
  [ -f "$p" ] && [ -x "$p" ]
}

# nvcc_start SRC DEP...: compiles SRC for every arch in ARCHS with -Xptxas -v in the background
# (cached: see the header). Without a usable nvcc, says so and does nothing.
nvcc_start() {
  local src=$1 a; shift
  NV_SRC=$src
  if ! nvcc_usable; then
    echo "nvcc not usable (NVCC=$NVCC): the nvcc compile check is SKIPPED"
    return 0
  fi
  local tag=sm${ARCHS// /-} gencode=()
  for a in $ARCHS; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  NV_OBJ=$OUT/$(basename "$src" .cu)_$tag.o
  NV_LOG=$OUT/ptxas_$tag.log
  (
    if stale "$NV_OBJ" "$src" "$@" || [ ! -f "$NV_LOG" ]; then
      rm -f "$NV_OBJ"
      "$NVCC" -std=c++17 "${gencode[@]}" -Inative -Inative/include "${NVCC_FLAGS[@]}" -Xptxas -v \
        -c "$src" -o "$NV_OBJ" > "$NV_LOG" 2>&1 || { rm -f "$NV_OBJ"; exit 1; }
    fi
  ) &
  NV_PID=$!
}

# nvcc_finish: waits for nvcc_start's compile and prints the ptxas summary; status=1 when the
# compile failed or a kernel spills.
nvcc_finish() {
  [ -n "$NV_PID" ] || return 0
  local archs="sm_${ARCHS// /, sm_}"
  if wait "$NV_PID"; then
    cp "$NV_LOG" "$OUT/ptxas.log"
    echo "nvcc -c $(basename "$NV_SRC") for $archs: OK (log: $OUT/ptxas.log)"
    ptxas_summary "$OUT/ptxas.log" || status=1
  else
    echo "nvcc -c $NV_SRC for $archs: FAILED (log: $NV_LOG)"
    grep -v '^ptxas info' "$NV_LOG" | head -50
    status=1
  fi
}

# ptxas_summary LOG: one line per kernel and arch (registers, spill stores / loads, stack frame,
# static shared memory; dynamic shared memory is not in ptxas's report) into $OUT/ptxas_summary.tsv,
# printed unless PTXAS_TABLE=0, then a one-line summary; calls the driver's ptxas_extra function if
# it has one. Returns 1 when any kernel spills (unless PTXAS_SPILLS_FAIL=0).
ptxas_summary() {
  local log=$1 demangle=cat
  command -v c++filt >/dev/null 2>&1 && demangle=c++filt
  awk -v q="'" '
    /Compiling entry function/ { i = index($0, "function " q); r = substr($0, i + 10); fn = substr(r, 1, index(r, q) - 1)
                                 r = substr(r, index(r, "for " q) + 5); arch = substr(r, 1, index(r, q) - 1) }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ && fn != "" { sm = 0
                           for (i = 1; i <= NF; ++i) { if ($i == "Used") regs = $(i + 1); if ($i ~ /^smem/) sm = $(i - 2) }
                           printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", arch, regs, st, ld, stack, sm, fn; fn = "" }
  ' "$log" > "$OUT/ptxas_raw.tsv"
  # The driver's PTXAS_SED runs after the namespace is stripped, before the arguments are cut.
  cut -f7 "$OUT/ptxas_raw.tsv" | $demangle | sed -E 's/ty::cuda:://g' | sed -E "${PTXAS_SED:-}" |
    sed -E 's/\(.*//; s/^void //; s/__nv_bfloat16/bf16/g; s/__half/f16/g' > "$OUT/ptxas_names.txt"
  paste <(cut -f1-6 "$OUT/ptxas_raw.tsv") "$OUT/ptxas_names.txt" | sort -t$'\t' -k7,7 -k1,1 > "$OUT/ptxas_summary.tsv"
  if [ "$PTXAS_TABLE" = 1 ]; then
    echo "ptxas (-Xptxas -v): arch regs spill-stores spill-loads stack static-smem kernel"
    local l
    for l in "${PTXAS_LEGEND[@]}"; do echo "  $l"; done
    awk -F'\t' '{ printf "  %-6s %4s %5s %5s %5s %6s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$OUT/ptxas_summary.tsv"
  fi
  if declare -F ptxas_extra >/dev/null; then ptxas_extra "$OUT/ptxas_summary.tsv"; fi
  awk -F'\t' '{ n++; if ($2 > mx) mx = $2; if ($3 + $4 > 0) sp++; if ($5 > 0) st++ } END {
    printf "ptxas summary: %d kernel builds, max %d registers, %d with spills, %d with a stack frame\n", n, mx, sp, st
    if (n == 0) print "ptxas: no kernel in the log"
    exit (sp > 0) }' "$OUT/ptxas_summary.tsv" && return 0
  awk -F'\t' '$3 + $4 > 0 { printf "  spills: %s %s (%s bytes stored, %s loaded)\n", $1, $7, $3, $4 }' "$OUT/ptxas_summary.tsv"
  if [ "$PTXAS_SPILLS_FAIL" = 1 ]; then echo "ptxas: a kernel spills registers: FAILED"; return 1; fi
  echo "ptxas: a kernel spills registers (not fatal for this driver: PTXAS_SPILLS_FAIL=0)"
}

cuemu_exit() {
  echo "total: $(( $(date +%s) - t0 )) s"
  exit $status
}

# Self-test of the summary (bash native/tests/cuemu/lib.sh): a clean kernel passes, a spill fails.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  OUT=$(mktemp -d)
  entry() {  # entry MANGLED ARCH REGS STORES LOADS
    printf "ptxas info    : Compiling entry function '%s' for 'sm_%s'\n" "$1" "$2"
    printf "ptxas info    : Function properties for %s\n" "$1"
    printf "    %s bytes stack frame, %s bytes spill stores, %s bytes spill loads\n" "$(( $4 + $5 ))" "$4" "$5"
    printf "ptxas info    : Used %s registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n" "$3"
  }
  entry _ZN2ty4cuda7clean_kEv 80 40 0 0 > "$OUT/clean.log"
  { entry _ZN2ty4cuda7clean_kEv 80 40 0 0; entry _ZN2ty4cuda7spill_kEv 90 255 8 8; } > "$OUT/spill.log"
  ok=1
  ptxas_summary "$OUT/clean.log" || { echo "self-test: a clean log FAILED the summary"; ok=0; }
  grep -q $'^sm_80\t40\t0\t0\t0\t4096\tclean_k$' "$OUT/ptxas_summary.tsv" || { echo "self-test: bad parse"; ok=0; }
  if ptxas_summary "$OUT/spill.log"; then echo "self-test: a spill PASSED the summary"; ok=0; fi
  rm -rf "$OUT"
  [ $ok = 1 ] && echo "lib.sh self-test: OK" || { echo "lib.sh self-test: FAILED"; exit 1; }
fi
