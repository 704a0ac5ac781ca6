#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench, tuned for this CPU (GGML_NATIVE=ON, i.e. -march=native),
# from the exact llama.cpp commit that node-llama-cpp bundles (llama/gitRelease.bundle), into
# the git-ignored .cache/llama.cpp/. Nothing is downloaded: the source comes from the bundle
# that scripts/llama-cpp/install.mjs installed (run that first; this script does if needed).
#
# Only the llama-bench target is built (ggml, ggml-cpu, llama, llama-common, llama-bench).
# Cost: ~13 CPU-minutes of g++; 7 to 20 minutes on 2 shared cores. Needs cmake >= 3.14, g++,
# git; ninja is used when present.
#
#   bash scripts/llama-cpp/build-native.sh [--force] [--jobs N]
#   -> prints the path of llama-bench
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/.cache/llama.cpp"
FORCE=0
JOBS="$(nproc 2>/dev/null || echo 2)"
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --jobs) JOBS="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

NLC_DIR="$(node "$ROOT/scripts/llama-cpp/install.mjs" --quiet)"
BUNDLE="$NLC_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle"
[ -f "$BUNDLE" ] || { echo "no llama.cpp source bundle at $BUNDLE" >&2; exit 1; }
COMMIT="$(git bundle list-heads "$BUNDLE" | awk '$2 == "HEAD" { print $1 }')"
BIN="$OUT/build/bin/llama-bench"
STAMP="$OUT/build/.tachyon-commit"

if [ "$FORCE" = 0 ] && [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$COMMIT" ]; then
  echo "llama-bench for llama.cpp ${COMMIT:0:7} already built" >&2
  echo "$BIN"
  exit 0
fi

command -v cmake >/dev/null || { echo "cmake is required (apt-get install cmake)" >&2; exit 1; }
if [ "$FORCE" = 1 ] || [ "$(git -C "$OUT/src" rev-parse HEAD 2>/dev/null)" != "$COMMIT" ]; then
  rm -rf "$OUT/src" "$OUT/build"
  mkdir -p "$OUT"
  git clone -q "$BUNDLE" "$OUT/src"
  git -C "$OUT/src" -c advice.detachedHead=false checkout -q "$COMMIT"
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
echo "configuring llama.cpp ${COMMIT:0:7} (GGML_NATIVE=ON) in $OUT/build ..." >&2
cmake -S "$OUT/src" -B "$OUT/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log" >&2; exit 1; }
echo "building llama-bench with $JOBS jobs (log: $OUT/build.log) ..." >&2
start=$SECONDS
cmake --build "$OUT/build" --target llama-bench -j "$JOBS" >"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log" >&2; exit 1; }
echo "$COMMIT" >"$STAMP"
echo "built in $((SECONDS - start)) s" >&2
echo "$BIN"
