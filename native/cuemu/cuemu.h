// cuemu: runs single-source CUDA kernels (.cuh) on the CPU, one fiber per CUDA thread.
//
// Kernel headers include this file first. Under nvcc it only pulls in the CUDA headers; under a
// host compiler (g++/clang++) it provides the CUDA execution model: threadIdx & co., __shared__,
// barriers and warp intrinsics with strict checking, atomics, and cuemu::launch. The design and
// its restrictions are in native/cuemu/README.md; the short version:
//   - `__shared__ T x[N];` works unchanged (it becomes a thread_local of the emulator worker
//     thread, and the kernel module's whole TLS block is poisoned with 0xFF at every block start).
//   - `extern __shared__` does not (link error): write CUEMU_DYNAMIC_SHARED(T, name) instead.
//   - no thread_local of the kernel's module may be used by code running inside a kernel.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cstdint>
// Dynamic shared memory, spelled the same way for nvcc and cuemu.
#define CUEMU_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char cuemu_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(cuemu_dynamic_smem_)
// Extra trailing parameters that carry the call site on the host; empty on the device.
#define CUEMU_SITE_PARAMS
#define CUEMU_SITE_ARGS
#else  // host emulation

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <vector_types.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- storage-class keywords --------------------------------------------------------------
// crt/host_defines.h leaves these empty for host compilers; cuemu gives __shared__ meaning.
#undef __shared__
#define __shared__ thread_local
#undef __launch_bounds__
#define __launch_bounds__(...)
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif

#define CUEMU_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::cuemu::detail::dynamic_shared())
// Call sites are collected through GCC/Clang's __builtin_FILE/__builtin_LINE default arguments.
#define CUEMU_SITE_PARAMS \
  , const char *cuemu_file_ = __builtin_FILE(), int cuemu_line_ = __builtin_LINE()
#define CUEMU_SITE_ARGS , cuemu_file_, cuemu_line_

namespace cuemu {

// Thrown by launch() when a kernel breaks a rule (barrier divergence, warp mask mismatch, ...)
// unless CUEMU_ON_ERROR=abort, in which case the report goes to stderr and the process aborts.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Order { Forward, Reverse, Random };
struct Schedule {
  Order order = Order::Forward;
  uint64_t seed = 0;
};
// Process-wide settings. Defaults come from CUEMU_SCHEDULE=forward|reverse|random:SEED,
// CUEMU_WORKERS=N (host threads running blocks in parallel, default 1) and
// CUEMU_ON_ERROR=throw|abort. Changing them while a launch runs is not allowed.
void set_schedule(Schedule s);
Schedule schedule();
std::string schedule_name(Schedule s);
void set_workers(int n);
void set_abort_on_error(bool abort);
// Measures one fiber context switch in ns (ucontext = swapcontext, else the _setjmp/_longjmp path).
double measure_switch_ns(bool ucontext, int iters);

namespace detail {

// Fiber stacks are kStackSize-aligned, so the running CUDA thread's header is found by masking
// the current frame address (no TLS lookup, and no TLS use by the runtime itself).
constexpr size_t kStackSize = size_t(256) << 10;
constexpr unsigned char kPoison = 0xFF;  // NaN for f32/f16/bf16/e4m3, -1 for integers

struct Site {
  const char* file;
  int line;
};

struct ThreadHeader {
  uint32_t magic;
  uint3 tIdx;  // threadIdx
  uint3 bIdx;  // blockIdx
  dim3 bDim;   // blockDim
  dim3 gDim;   // gridDim
  unsigned lane, warp, linear;
};
constexpr uint32_t kMagic = 0xC0DAF1BE;

inline ThreadHeader* self() {
  auto sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  return reinterpret_cast<ThreadHeader*>(sp & ~uintptr_t(kStackSize - 1));
}

// One lane's arrival at a warp-collective operation. All lanes named in `mask` must arrive with
// the same op, mask and (unless anySite) call site; the last one to arrive runs `complete`, which
// sees every participating lane's record (others are nullptr) and writes each lane's `out`.
struct Collective;
using CompleteFn = void (*)(Collective* const* lanes, unsigned mask);
struct Collective {
  const char* op;
  unsigned mask;
  Site site;
  bool anySite;
  long long uniform;  // must be equal on all lanes (e.g. shuffle width)
  long long arg;      // per lane (e.g. source lane)
  const void* in;
  void* out;
  size_t size;
  CompleteFn complete;
};

enum BarrierKind { kSync = 0, kCount, kAnd, kOr };
int barrier(Site site, BarrierKind kind, int pred);
void collective(Collective& c);
[[noreturn]] void fail(const std::string& what, Site site);
void* dynamic_shared();
bool is_shared(const void* p, size_t n);
void cp_async(void* dst, const void* src, int cpSize, int srcSize, Site site);
void cp_async_commit();
void cp_async_wait(int n);
unsigned active_mask();

struct LaunchDesc {
  const char* name;
  void (*entry)(void* ctx);  // runs the kernel body for the current CUDA thread
  void* ctx;
  void* (*touchTls)();       // touches a TLS variable of the kernel's module (allocates its block)
  const void* kernel;        // for naming the kernel in reports (dladdr)
  dim3 grid, block;
  size_t dynSmem;
};
void launch(const LaunchDesc& d);

template <class F, class Tuple>
struct Thunk {
  F fn;
  Tuple params;
  static void run(void* p) {
    auto* t = static_cast<Thunk*>(p);
    std::apply(t->fn, t->params);  // params are lvalues: by-value kernel params get copies
  }
};

namespace {
thread_local char tlsAnchor;  // one per TU, so it is in the module that holds the kernel
inline void* touchTls() { return &tlsAnchor; }
}  // namespace

template <class T>
inline T bitcast(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace detail

// Runs kernel<<<grid, block, dynSmem>>>(args...) to completion. Arguments convert to the
// kernel's parameter types as in CUDA; every CUDA thread gets its own copy of by-value params.
template <class... P, class... A>
void launch_named(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dynSmem,
                  A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "cuemu::launch: wrong number of kernel arguments");
  using Tuple = std::tuple<std::decay_t<P>...>;
  detail::Thunk<void (*)(P...), Tuple> thunk{kernel, Tuple(std::forward<A>(args)...)};
  detail::LaunchDesc d{name, &detail::Thunk<void (*)(P...), Tuple>::run, &thunk,
                       &detail::touchTls, reinterpret_cast<const void*>(kernel), grid, block,
                       dynSmem};
  detail::launch(d);
}
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dynSmem, A&&... args) {
  launch_named(nullptr, kernel, grid, block, dynSmem, std::forward<A>(args)...);
}

}  // namespace cuemu

// ---- built-in variables ---------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::cuemu::detail::self()->tIdx))
#define blockIdx (static_cast<const uint3&>(::cuemu::detail::self()->bIdx))
#define blockDim (static_cast<const dim3&>(::cuemu::detail::self()->bDim))
#define gridDim (static_cast<const dim3&>(::cuemu::detail::self()->gDim))
static constexpr int warpSize = 32;

// ---- barriers -------------------------------------------------------------------------------
inline void __syncthreads(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ::cuemu::detail::barrier({f, l}, ::cuemu::detail::kSync, 0);
}
inline int __syncthreads_count(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::barrier({f, l}, ::cuemu::detail::kCount, p != 0);
}
inline int __syncthreads_and(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::barrier({f, l}, ::cuemu::detail::kAnd, p != 0);
}
inline int __syncthreads_or(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::barrier({f, l}, ::cuemu::detail::kOr, p != 0);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ::cuemu::detail::fail("__trap() called", {f, l});
}

// ---- warp intrinsics ------------------------------------------------------------------------
namespace cuemu {
namespace detail {
void shfl_complete_idx(Collective* const* lanes, unsigned mask);
void shfl_complete_up(Collective* const* lanes, unsigned mask);
void shfl_complete_down(Collective* const* lanes, unsigned mask);
void shfl_complete_xor(Collective* const* lanes, unsigned mask);
void vote_complete(Collective* const* lanes, unsigned mask);
void noop_complete(Collective* const* lanes, unsigned mask);

template <class T>
inline T shfl(const char* op, CompleteFn fn, unsigned mask, T var, int arg, int width, Site s) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16,
                "cuemu: shuffled types must be trivially copyable and at most 16 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]", s);
  T out;
  Collective c{op, mask, s, false, width, arg, &var, &out, sizeof(T), fn};
  collective(c);
  return out;
}
// kind: 0 ballot, 1 any, 2 all, 3 reduce_add, 4 reduce_min, 5 reduce_max (uniform field)
inline unsigned vote(const char* op, int kind, unsigned mask, unsigned v, Site s) {
  unsigned out = 0;
  Collective c{op, mask, s, false, kind, 0, &v, &out, sizeof v, &vote_complete};
  collective(c);
  return out;
}
}  // namespace detail
}  // namespace cuemu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32,
                     const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::shfl("__shfl_sync", &::cuemu::detail::shfl_complete_idx, mask, var,
                               srcLane, width, {f, l});
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::shfl("__shfl_up_sync", &::cuemu::detail::shfl_complete_up, mask, var,
                               int(delta), width, {f, l});
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::shfl("__shfl_down_sync", &::cuemu::detail::shfl_complete_down, mask,
                               var, int(delta), width, {f, l});
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32,
                         const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuemu::detail::shfl("__shfl_xor_sync", &::cuemu::detail::shfl_complete_xor, mask, var,
                               laneMask, width, {f, l});
}
inline unsigned __ballot_sync(unsigned mask, int p, const char* f = __builtin_FILE(),
                              int l = __builtin_LINE()) {
  return ::cuemu::detail::vote("__ballot_sync", 0, mask, p != 0, {f, l});
}
inline int __any_sync(unsigned mask, int p, const char* f = __builtin_FILE(),
                      int l = __builtin_LINE()) {
  return int(::cuemu::detail::vote("__any_sync", 1, mask, p != 0, {f, l}));
}
inline int __all_sync(unsigned mask, int p, const char* f = __builtin_FILE(),
                      int l = __builtin_LINE()) {
  return int(::cuemu::detail::vote("__all_sync", 2, mask, p != 0, {f, l}));
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, const char* f = __builtin_FILE(),
                                  int l = __builtin_LINE()) {
  return ::cuemu::detail::vote("__reduce_add_sync", 3, mask, v, {f, l});
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, const char* f = __builtin_FILE(),
                                  int l = __builtin_LINE()) {
  return ::cuemu::detail::vote("__reduce_min_sync", 4, mask, v, {f, l});
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, const char* f = __builtin_FILE(),
                                  int l = __builtin_LINE()) {
  return ::cuemu::detail::vote("__reduce_max_sync", 5, mask, v, {f, l});
}
// __syncwarp may be matched from different call sites (allowed from sm_70 on).
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(),
                       int l = __builtin_LINE()) {
  ::cuemu::detail::Collective c{"__syncwarp", mask, {f, l}, true, 0, 0, nullptr, nullptr, 0,
                                &::cuemu::detail::noop_complete};
  ::cuemu::detail::collective(c);
}
// Lanes of the calling warp that exist and have not exited (the GPU's answer depends on
// convergence, which the emulator does not model).
inline unsigned __activemask() { return ::cuemu::detail::active_mask(); }
inline unsigned __lanemask_lt() { return (1u << ::cuemu::detail::self()->lane) - 1u; }

// ---- atomics (real atomics: blocks may run on several host threads) --------------------------
namespace cuemu {
namespace detail {
template <class T, class F>
inline T atomic_update(T* p, F f) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cuemu: 32/64-bit atomics only");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* q = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    T o = bitcast<T>(&old);
    T n = f(o);
    U nu;
    std::memcpy(&nu, &n, sizeof nu);
    if (__atomic_compare_exchange_n(q, &old, nu, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return o;
  }
}
}  // namespace detail
}  // namespace cuemu

#define CUEMU_INT_ATOMICS(T)                                                                    \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }          \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }          \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }          \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }            \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }          \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }        \
  inline T atomicMax(T* p, T v) {                                                               \
    return ::cuemu::detail::atomic_update(p, [v](T o) { return o < v ? v : o; });               \
  }                                                                                             \
  inline T atomicMin(T* p, T v) {                                                               \
    return ::cuemu::detail::atomic_update(p, [v](T o) { return v < o ? v : o; });               \
  }                                                                                             \
  inline T atomicCAS(T* p, T cmp, T v) {                                                        \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    return cmp;                                                                                 \
  }
CUEMU_INT_ATOMICS(int)
CUEMU_INT_ATOMICS(unsigned)
CUEMU_INT_ATOMICS(unsigned long long)
CUEMU_INT_ATOMICS(long long)
#undef CUEMU_INT_ATOMICS
inline float atomicAdd(float* p, float v) {
  return ::cuemu::detail::atomic_update(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
  return ::cuemu::detail::atomic_update(p, [v](double o) { return o + v; });
}
inline float atomicExch(float* p, float v) {
  return ::cuemu::detail::atomic_update(p, [v](float) { return v; });
}
inline unsigned atomicInc(unsigned* p, unsigned lim) {
  return ::cuemu::detail::atomic_update(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned lim) {
  return ::cuemu::detail::atomic_update(
      p, [lim](unsigned o) { return (o == 0 || o > lim) ? lim : o - 1; });
}

// ---- misc device functions ------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
inline long long clock64() {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}
inline void __nanosleep(unsigned) {}

inline int __float_as_int(float x) { return ::cuemu::detail::bitcast<int>(&x); }
inline unsigned __float_as_uint(float x) { return ::cuemu::detail::bitcast<unsigned>(&x); }
inline float __int_as_float(int x) { return ::cuemu::detail::bitcast<float>(&x); }
inline float __uint_as_float(unsigned x) { return ::cuemu::detail::bitcast<float>(&x); }
inline long long __double_as_longlong(double x) { return ::cuemu::detail::bitcast<long long>(&x); }
inline double __longlong_as_double(long long x) { return ::cuemu::detail::bitcast<double>(&x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  uint64_t v = (uint64_t(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
  s &= 31;
  return s ? (hi << s) | (lo >> (32 - s)) : hi;
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  s &= 31;
  return s ? (lo >> s) | (hi << (32 - s)) : lo;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
  return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xFF) * ((b >> (8 * i)) & 0xFF);
  return c;
}
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline unsigned __float2uint_rn(float x) { return unsigned(std::nearbyint(x)); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

#endif  // host emulation
