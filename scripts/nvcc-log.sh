#!/bin/sh
# CMake's CUDA compiler launcher (CMakeLists.txt): runs one nvcc command with -Xptxas -v and keeps
# its report in LOGDIR/<object>.log, so CI's ptxas step (registers, shared memory, spills per
# kernel and arch: scripts/ptxas-summary.mjs) reads what the addon build itself compiled instead
# of compiling every kernel a second time. Warnings and errors still reach the build output.
# Usage (from CMake): nvcc-log.sh LOGDIR nvcc ARGS...
logdir=$1
shift
obj=unknown
prev=
for a in "$@"; do
  [ "$prev" = "-o" ] && obj=$(basename "$a")
  prev=$a
done
mkdir -p "$logdir"
log="$logdir/$obj.log"
"$@" >"$log" 2>&1
rc=$?
# ptxas -v info lines are the report; everything else (warnings, errors) is shown.
grep -v -e '^ptxas info' -e 'bytes stack frame, [0-9]* bytes spill stores' "$log" >&2
exit $rc
