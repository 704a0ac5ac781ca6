// cuemu runtime: fibers, the per-block scheduler, barrier / warp-collective checking, cp.async,
// and the worker threads that run blocks. See README.md for the design.
//
// Fortify's longjmp check rejects jumps between stacks; fibers jump between stacks by design.
#undef _FORTIFY_SOURCE
#define _FORTIFY_SOURCE 0

#include "cuemu.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

// NOTE: no thread_local anywhere in this file. Worker threads poison the TLS block of the module
// that holds the kernels, which may be this very module.

namespace cuemu {
namespace detail {
namespace {

enum class State { Runnable, AtBarrier, AtWarp, Exited };

struct CpOp {
  unsigned char* dst;
  unsigned char data[16];
  int size;
  unsigned group;
};

struct Worker;
struct Block;

struct Fiber {
  ThreadHeader hdr;  // first member: self() casts the stack base to ThreadHeader*
  Worker* worker = nullptr;
  jmp_buf jb;
  ucontext_t uc;
  bool started = false;  // has a live context (else it is (re)made with makecontext)
  bool atLoop = false;   // parked between two CUDA threads, ready for the next assignment
  State state = State::Exited;
  Site site{};           // barrier call site
  BarrierKind barKind = kSync;
  int barPred = 0;
  int barResult = 0;
  Collective* coll = nullptr;
  std::vector<CpOp> cp;
  unsigned cpGroup = 0;  // index of the group the next cp.async joins
  unsigned char* stackLo = nullptr;
  unsigned char* stackHi = nullptr;
};

struct TlsRange {
  void (*key)(void*);
  unsigned char* base;
  size_t size;
};

struct Launch {
  LaunchDesc d;
  std::string name;
  Schedule sched;
  unsigned nthreads = 0, nblocks = 0;
  std::atomic<unsigned> next{0};
  std::atomic<bool> failed{false};
  std::mutex errMu;
  std::string error;
};

struct Block {
  Launch* L = nullptr;
  uint3 idx{};
  unsigned linear = 0;
  std::deque<Fiber*> ready;
  std::mt19937_64 rng;
  bool failed = false;
  std::string error;
  unsigned char* tls = nullptr;
  size_t tlsSize = 0;
  unsigned char* dyn = nullptr;
  size_t dynSize = 0;
};

struct Worker {
  jmp_buf schedJb;
  ucontext_t schedUc;
  std::vector<Fiber*> fibers;
  Block block;
  std::vector<TlsRange> tlsCache;
  std::vector<unsigned char> dynBuf;
  std::thread th;
};

// ---- settings -----------------------------------------------------------------------------------
std::mutex gSettingsMu;
bool gSettingsInit = false;
Schedule gSchedule;
int gWorkers = 1;
bool gAbort = false;
bool gUcontext = false;  // CUEMU_SWITCH=ucontext: swapcontext on every switch (for comparison)

Schedule parse_schedule(const char* s) {
  Schedule r;
  if (!s || !*s || !strcmp(s, "forward")) return r;
  if (!strcmp(s, "reverse")) {
    r.order = Order::Reverse;
    return r;
  }
  if (!strncmp(s, "random", 6)) {
    r.order = Order::Random;
    r.seed = s[6] == ':' ? std::strtoull(s + 7, nullptr, 0) : 1;
    return r;
  }
  std::fprintf(stderr, "cuemu: CUEMU_SCHEDULE=%s is not forward|reverse|random:SEED; using forward\n", s);
  return r;
}

void init_settings_locked() {
  if (gSettingsInit) return;
  gSettingsInit = true;
  gSchedule = parse_schedule(std::getenv("CUEMU_SCHEDULE"));
  if (const char* w = std::getenv("CUEMU_WORKERS")) gWorkers = std::max(1, std::atoi(w));
  if (const char* e = std::getenv("CUEMU_ON_ERROR")) gAbort = !strcmp(e, "abort");
  if (const char* s = std::getenv("CUEMU_SWITCH")) gUcontext = !strcmp(s, "ucontext");
}

// ---- reports ------------------------------------------------------------------------------------
std::string demangle(const char* s) {
  int st = 0;
  char* d = abi::__cxa_demangle(s, nullptr, nullptr, &st);
  std::string r = st == 0 && d ? d : s;
  std::free(d);
  return r;
}

std::string fmt3(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
}

std::string site_str(Site s) {
  if (!s.file) return "?";
  const char* f = std::strrchr(s.file, '/');
  return std::string(f ? f + 1 : s.file) + ":" + std::to_string(s.line);
}

bool same_site(Site a, Site b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && !strcmp(a.file, b.file)));
}

std::string tid_str(const Block& b, unsigned lin) {
  const dim3& bd = b.L->d.block;
  return fmt3(lin % bd.x, (lin / bd.x) % bd.y, lin / (bd.x * bd.y));
}

// "threads 0-31 (0,0,0)..(31,0,0), 64" — compact list of linear ids with their 3D coordinates.
std::string tid_list(const Block& b, const std::vector<unsigned>& ids) {
  std::string s;
  size_t i = 0, shown = 0;
  while (i < ids.size()) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    if (++shown > 8) {
      s += "...";
      break;
    }
    s += tid_str(b, ids[i]);
    if (j > i) s += ".." + tid_str(b, ids[j]);
    i = j + 1;
  }
  return s + " [" + std::to_string(ids.size()) + " thread" + (ids.size() == 1 ? "" : "s") + "]";
}

std::string block_header(const Block& b, const char* what) {
  const LaunchDesc& d = b.L->d;
  return std::string("cuemu: ") + what + " in kernel `" + b.L->name + "` block " +
         fmt3(b.idx.x, b.idx.y, b.idx.z) + " (grid " + fmt3(d.grid.x, d.grid.y, d.grid.z) +
         ", block " + fmt3(d.block.x, d.block.y, d.block.z) + ", schedule " +
         schedule_name(b.L->sched) + ")\n";
}

const char* barrier_name(BarrierKind k) {
  switch (k) {
    case kCount: return "__syncthreads_count";
    case kAnd: return "__syncthreads_and";
    case kOr: return "__syncthreads_or";
    default: return "__syncthreads";
  }
}

std::string hex(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", m);
  return buf;
}

std::string where(const Block& b, Fiber* f) {
  switch (f->state) {
    case State::Exited: return "has exited";
    case State::Runnable: return "is running";
    case State::AtBarrier:
      return std::string("waits at ") + barrier_name(f->barKind) + " " + site_str(f->site);
    case State::AtWarp:
      return std::string("waits at ") + f->coll->op + " mask " + hex(f->coll->mask) + " " +
             site_str(f->coll->site);
  }
  (void)b;
  return "?";
}

// ---- fibers -------------------------------------------------------------------------------------
const size_t kPage = 4096;
const size_t kHeaderBytes = (sizeof(Fiber) + kPage - 1) / kPage * kPage;

void to_scheduler(Fiber* f);

void fiber_exit(Fiber* f) {
  for (CpOp& op : f->cp) std::memcpy(op.dst, op.data, op.size);  // copies still land
  f->cp.clear();
  f->state = State::Exited;
}

void record_error(Block& b, const std::string& msg) {
  if (gAbort) {
    std::fputs(msg.c_str(), stderr);
    std::fflush(stderr);
    std::abort();
  }
  if (!b.failed) {
    b.failed = true;
    b.error = msg;
  }
}

void fiber_main(unsigned lo, unsigned hi) {
  Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
  for (;;) {
    Block& b = f->worker->block;
    f->atLoop = false;
    try {
      b.L->d.entry(b.L->d.ctx);
    } catch (const std::exception& e) {
      record_error(b, block_header(b, "C++ exception") + "  thread " + tid_str(b, f->hdr.linear) +
                          ": " + e.what() + "\n");
    } catch (...) {
      record_error(b, block_header(b, "C++ exception") + "  thread " + tid_str(b, f->hdr.linear) +
                          ": unknown exception\n");
    }
    fiber_exit(f);
    f->atLoop = true;
    to_scheduler(f);
  }
}

void prepare(Fiber* f) {
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stackLo;
  f->uc.uc_stack.ss_size = size_t(f->stackHi - f->stackLo);
  f->uc.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->uc, reinterpret_cast<void (*)()>(&fiber_main), 2, unsigned(p & 0xFFFFFFFFu),
              unsigned(p >> 32));
}

Fiber* new_fiber(Worker* w) {
  const size_t S = kStackSize;
  void* raw = mmap(nullptr, 2 * S, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (raw == MAP_FAILED) throw std::runtime_error("cuemu: cannot map a fiber stack");
  uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  uintptr_t a = (r + S - 1) & ~uintptr_t(S - 1);
  if (a > r) munmap(raw, a - r);
  if (r + 2 * S > a + S) munmap(reinterpret_cast<void*>(a + S), r + 2 * S - (a + S));
  Fiber* f = new (reinterpret_cast<void*>(a)) Fiber();
  f->hdr.magic = kMagic;
  f->worker = w;
  // A guard page between the header and the stack: an overflowing kernel faults instead of
  // silently overwriting its thread's header.
  mprotect(reinterpret_cast<void*>(a + kHeaderBytes), kPage, PROT_NONE);
  f->stackLo = reinterpret_cast<unsigned char*>(a + kHeaderBytes + kPage);
  // Stagger the stack tops: all regions are kStackSize-aligned, so equal offsets would fall into
  // the same cache sets.
  f->stackHi = reinterpret_cast<unsigned char*>(a + S - (w->fibers.size() % 64) * 64);
  return f;
}

__attribute__((noinline)) void resume(Worker* w, Fiber* f) {
  if (gUcontext) {
    if (!f->started) {
      prepare(f);
      f->started = true;
    }
    swapcontext(&w->schedUc, &f->uc);
    return;
  }
  if (_setjmp(w->schedJb) == 0) {
    if (!f->started) {
      // First entry: one setcontext (one sigprocmask); afterwards only _setjmp/_longjmp.
      prepare(f);
      f->started = true;
      setcontext(&f->uc);
    }
    _longjmp(f->jb, 1);
  }
}

__attribute__((noinline)) void to_scheduler(Fiber* f) {
  Worker* w = f->worker;
  if (gUcontext) {
    swapcontext(&f->uc, &w->schedUc);
    return;
  }
  if (_setjmp(f->jb) == 0) _longjmp(w->schedJb, 1);
}

Fiber* cur() {
  Fiber* f = reinterpret_cast<Fiber*>(self());
  if (f->hdr.magic != kMagic) {
    std::fputs("cuemu: a CUDA intrinsic was called outside of a kernel launched by cuemu\n", stderr);
    std::abort();
  }
  return f;
}

[[noreturn]] void die_in_fiber(Fiber* f, const std::string& msg) {
  Block& b = f->worker->block;
  record_error(b, msg);
  f->atLoop = false;
  to_scheduler(f);
  std::fputs("cuemu: internal error: a failed fiber was resumed\n", stderr);
  std::abort();
}

// ---- scheduling ---------------------------------------------------------------------------------
void push_ordered(Block& b, std::vector<Fiber*>& v) {
  switch (b.L->sched.order) {
    case Order::Forward: break;
    case Order::Reverse: std::reverse(v.begin(), v.end()); break;
    case Order::Random: std::shuffle(v.begin(), v.end(), b.rng); break;
  }
  for (Fiber* f : v) b.ready.push_back(f);
}

unsigned warp_exist_mask(const Block& b, unsigned warp) {
  unsigned n = b.L->nthreads - warp * 32;
  return n >= 32 ? 0xffffffffu : (1u << n) - 1u;
}

// Called by the scheduler when no thread can run. Returns false when the block is finished
// (or failed); otherwise releases a barrier.
bool idle(Worker* w) {
  Block& b = w->block;
  const unsigned n = b.L->nthreads;
  {
    // Fast path (every barrier of a correct kernel): all threads at one barrier. No allocation.
    Fiber* f0 = w->fibers[0];
    unsigned i = 0;
    int count = 0;
    if (f0->state == State::AtBarrier)
      for (; i < n; ++i) {
        Fiber* f = w->fibers[i];
        if (f->state != State::AtBarrier || f->barKind != f0->barKind || !same_site(f->site, f0->site)) break;
        count += f->barPred;
      }
    if (i == n) {
      BarrierKind k = f0->barKind;
      int result = k == kCount ? count : k == kAnd ? int(count == int(n)) : k == kOr ? int(count > 0) : 0;
      for (unsigned j = 0; j < n; ++j) {
        Fiber* f = w->fibers[b.L->sched.order == Order::Reverse ? n - 1 - j : j];
        f->barResult = result;
        f->state = State::Runnable;
        b.ready.push_back(f);
      }
      if (b.L->sched.order == Order::Random) std::shuffle(b.ready.begin(), b.ready.end(), b.rng);
      return true;
    }
  }
  std::vector<unsigned> exited, atWarp;
  std::vector<std::pair<Site, BarrierKind>> groups;
  std::vector<std::vector<unsigned>> members;
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = w->fibers[i];
    if (f->state == State::Exited) {
      exited.push_back(i);
    } else if (f->state == State::AtWarp) {
      atWarp.push_back(i);
    } else if (f->state == State::AtBarrier) {
      size_t g = 0;
      while (g < groups.size() && !(same_site(groups[g].first, f->site) && groups[g].second == f->barKind)) ++g;
      if (g == groups.size()) {
        groups.push_back({f->site, f->barKind});
        members.emplace_back();
      }
      members[g].push_back(i);
    }
  }
  if (exited.size() == n) return false;
  if (!atWarp.empty()) {
    std::string m = block_header(b, "deadlock at a warp collective");
    // One line per group of waiting lanes (same warp, op, mask, site), then where the lanes
    // they wait for are, grouped by state.
    auto lanes_str = [](const std::vector<unsigned>& ls) {
      std::string r;
      for (size_t i = 0; i < ls.size();) {
        size_t j = i;
        while (j + 1 < ls.size() && ls[j + 1] == ls[j] + 1) ++j;
        r += (r.empty() ? "" : ",") + std::to_string(ls[i]) + (j > i ? "-" + std::to_string(ls[j]) : "");
        i = j + 1;
      }
      return r;
    };
    std::vector<bool> done(n, false);
    for (unsigned i : atWarp) {
      if (done[i]) continue;
      Fiber* f = w->fibers[i];
      const unsigned warp = f->hdr.warp, mask = f->coll->mask;
      std::vector<unsigned> waiting;
      std::vector<std::pair<std::string, std::vector<unsigned>>> missing;
      for (unsigned l = 0; l < 32 && warp * 32 + l < n; ++l) {
        Fiber* g = w->fibers[warp * 32 + l];
        bool same = g->state == State::AtWarp && g->coll->mask == mask && !strcmp(g->coll->op, f->coll->op) &&
                    same_site(g->coll->site, f->coll->site);
        if (same) {
          waiting.push_back(l);
          done[warp * 32 + l] = true;
        } else if (mask >> l & 1) {
          std::string wh = where(b, g);
          size_t k = 0;
          while (k < missing.size() && missing[k].first != wh) ++k;
          if (k == missing.size()) missing.push_back({wh, {}});
          missing[k].second.push_back(l);
        }
      }
      m += "  warp " + std::to_string(warp) + " lanes " + lanes_str(waiting) + " " + where(b, f) +
           "; the other lanes of the mask never joined:\n";
      for (auto& ms : missing) m += "      lanes " + lanes_str(ms.second) + " " + ms.first + "\n";
    }
    for (size_t g = 0; g < groups.size(); ++g)
      m += std::string("  ") + barrier_name(groups[g].second) + " at " + site_str(groups[g].first) +
           ": " + tid_list(b, members[g]) + "\n";
    record_error(b, m);
    return false;
  }
  if (!exited.empty() || groups.size() > 1) {
    std::string m = block_header(b, exited.empty() ? "threads wait at different barriers"
                                                    : "threads exited while others wait at a barrier");
    for (size_t g = 0; g < groups.size(); ++g)
      m += std::string("  ") + barrier_name(groups[g].second) + " at " + site_str(groups[g].first) +
           ": " + tid_list(b, members[g]) + "\n";
    if (!exited.empty()) m += "  exited: " + tid_list(b, exited) + "\n";
    record_error(b, m);
    return false;
  }
  // Everyone is at the same barrier: release it.
  BarrierKind k = groups[0].second;
  int count = 0;
  for (unsigned i = 0; i < n; ++i) count += w->fibers[i]->barPred;
  int result = k == kCount ? count : k == kAnd ? int(count == int(n)) : k == kOr ? int(count > 0) : 0;
  std::vector<Fiber*> v;
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = w->fibers[i];
    f->barResult = result;
    f->state = State::Runnable;
    v.push_back(f);
  }
  push_ordered(b, v);
  return true;
}

unsigned char* module_tls(Worker* w, const LaunchDesc& d, size_t* size) {
  for (const TlsRange& r : w->tlsCache)
    if (r.key == d.entry) {
      *size = r.size;
      return r.base;
    }
  d.touchTls();  // make sure this thread's TLS block of the kernel's module is allocated
  struct Q {
    const void* addr;
    unsigned char* base;
    size_t size;
  } q{reinterpret_cast<const void*>(d.entry), nullptr, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* p) -> int {
        Q* q = static_cast<Q*>(p);
        uintptr_t a = reinterpret_cast<uintptr_t>(q->addr);
        bool mine = false;
        size_t tls = 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && a >= info->dlpi_addr + ph.p_vaddr &&
              a < info->dlpi_addr + ph.p_vaddr + ph.p_memsz)
            mine = true;
          if (ph.p_type == PT_TLS) tls = ph.p_memsz;
        }
        if (!mine) return 0;
        q->base = static_cast<unsigned char*>(info->dlpi_tls_data);
        q->size = q->base ? tls : 0;
        return 1;
      },
      &q);
  w->tlsCache.push_back({d.entry, q.base, q.size});
  *size = q.size;
  return q.base;
}

void run_block(Worker* w, Launch* L, unsigned lin) {
  Block& b = w->block;
  const LaunchDesc& d = L->d;
  b.L = L;
  b.linear = lin;
  b.idx = uint3{lin % d.grid.x, (lin / d.grid.x) % d.grid.y, lin / (d.grid.x * d.grid.y)};
  b.ready.clear();
  b.failed = false;
  b.error.clear();
  b.rng.seed(L->sched.seed * 0x9E3779B97F4A7C15ull + lin);
  b.tls = module_tls(w, d, &b.tlsSize);
  if (b.tls) std::memset(b.tls, kPoison, b.tlsSize);
  if (w->dynBuf.size() < d.dynSmem + 128) w->dynBuf.resize(d.dynSmem + 128);
  b.dyn = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(w->dynBuf.data()) + 127) & ~uintptr_t(127));
  b.dynSize = d.dynSmem;
  std::memset(b.dyn, kPoison, b.dynSize);

  const unsigned n = L->nthreads;
  while (w->fibers.size() < n) w->fibers.push_back(new_fiber(w));
  std::vector<Fiber*> v(n);
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = w->fibers[i];
    f->hdr.tIdx = uint3{i % d.block.x, (i / d.block.x) % d.block.y, i / (d.block.x * d.block.y)};
    f->hdr.bIdx = b.idx;
    f->hdr.bDim = d.block;
    f->hdr.gDim = d.grid;
    f->hdr.linear = i;
    f->hdr.lane = i % 32;
    f->hdr.warp = i / 32;
    f->state = State::Runnable;
    f->coll = nullptr;
    f->barPred = 0;
    f->cp.clear();
    f->cpGroup = 0;
    v[i] = f;
  }
  push_ordered(b, v);
  for (;;) {
    while (!b.ready.empty() && !b.failed) {
      Fiber* f = b.ready.front();
      b.ready.pop_front();
      resume(w, f);
    }
    if (b.failed || !idle(w)) break;
  }
  if (b.failed) {
    // Threads stopped mid-kernel get a fresh context next time; their stacks are just dropped.
    for (unsigned i = 0; i < n; ++i)
      if (!w->fibers[i]->atLoop) w->fibers[i]->started = false;
    std::lock_guard<std::mutex> g(L->errMu);
    if (!L->failed.exchange(true)) L->error = b.error;
  }
}

// ---- worker pool --------------------------------------------------------------------------------
struct Pool {
  std::mutex launchMu;  // one launch at a time (workers and their TLS are shared)
  std::mutex mu;
  std::condition_variable cv, doneCv;
  std::vector<std::unique_ptr<Worker>> workers;
  Launch* job = nullptr;
  uint64_t gen = 0;
  unsigned active = 0, jobWorkers = 1;
  bool stop = false;

  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& w : workers)
      if (w->th.joinable()) w->th.join();
  }

  void work(Worker* w, unsigned index) {
    uint64_t seen = 0;
    for (;;) {
      Launch* L;
      {
        std::unique_lock<std::mutex> g(mu);
        cv.wait(g, [&] { return stop || gen != seen; });
        if (stop) return;
        seen = gen;
        L = job;
      }
      if (L && index < jobWorkers) {
        for (;;) {
          if (L->failed.load()) break;
          unsigned i = L->next.fetch_add(1);
          if (i >= L->nblocks) break;
          run_block(w, L, i);
        }
      }
      std::lock_guard<std::mutex> g(mu);
      if (--active == 0) doneCv.notify_all();
    }
  }

  void run(Launch* L, int nworkers) {
    std::unique_lock<std::mutex> g(mu);
    while (int(workers.size()) < nworkers) {
      workers.emplace_back(new Worker());
      Worker* w = workers.back().get();
      unsigned index = unsigned(workers.size() - 1);
      w->th = std::thread([this, w, index] { work(w, index); });
    }
    // Only the first nworkers take blocks; the others wake and go back to sleep at once.
    job = L;
    jobWorkers = unsigned(nworkers);
    active = unsigned(workers.size());
    ++gen;
    cv.notify_all();
    doneCv.wait(g, [&] { return active == 0; });
    job = nullptr;
  }
};

// Leaked on purpose (workers must not be joined during static destruction). After fork() the
// child has none of the worker threads: it starts from a fresh pool (the old one is leaked).
Pool* gPool = nullptr;
std::once_flag gPoolOnce;
Pool& pool() {
  std::call_once(gPoolOnce, [] {
    gPool = new Pool();
    pthread_atfork(nullptr, nullptr, [] { gPool = new Pool(); });
  });
  return *gPool;
}

}  // namespace

// ---- fiber-side API -------------------------------------------------------------------------------
int barrier(Site site, BarrierKind kind, int pred) {
  Fiber* f = cur();
  f->state = State::AtBarrier;
  f->site = site;
  f->barKind = kind;
  f->barPred = pred;
  to_scheduler(f);
  return f->barResult;
}

void fail(const std::string& what, Site site) {
  Fiber* f = cur();
  Block& b = f->worker->block;
  die_in_fiber(f, block_header(b, "kernel error") + "  thread " + tid_str(b, f->hdr.linear) + " at " +
                      site_str(site) + ": " + what + "\n");
}

void collective(Collective& c) {
  Fiber* f = cur();
  Worker* w = f->worker;
  Block& b = w->block;
  const unsigned lane = f->hdr.lane, warp = f->hdr.warp;
  auto err = [&](const std::string& what) {
    die_in_fiber(f, block_header(b, "warp collective error") + "  warp " + std::to_string(warp) +
                        ", thread " + tid_str(b, f->hdr.linear) + " (lane " + std::to_string(lane) +
                        ") at " + c.op + " " + site_str(c.site) + ": " + what + "\n");
  };
  if (!(c.mask >> lane & 1)) err("the calling lane is not in its mask " + hex(c.mask));
  unsigned exist = warp_exist_mask(b, warp);
  if (c.mask & ~exist)
    err("mask " + hex(c.mask) + " names lanes that do not exist (the block has " +
        std::to_string(b.L->nthreads) + " threads)");
  f->coll = &c;
  f->state = State::AtWarp;
  Collective* lanes[32] = {};
  for (unsigned l = 0; l < 32; ++l) {
    if (!(c.mask >> l & 1)) continue;
    Fiber* g = w->fibers[warp * 32 + l];
    if (g->state == State::Exited) err("lane " + std::to_string(l) + " of the mask has exited");
    if (g->state != State::AtWarp || g->coll->mask != c.mask) {
      to_scheduler(f);  // not everyone is here yet: the last lane to arrive completes the op
      return;
    }
    lanes[l] = g->coll;
  }
  for (unsigned l = 0; l < 32; ++l) {
    Collective* o = lanes[l];
    if (!o) continue;
    if (strcmp(o->op, c.op) || (!c.anySite && !same_site(o->site, c.site)) || o->uniform != c.uniform ||
        o->size != c.size) {
      // Group lanes by what they called: "lanes 0-15: __shfl_xor_sync at f.cuh:12 (width 32)".
      std::vector<std::pair<std::string, std::string>> groups;
      unsigned prev = 99;
      for (unsigned k = 0; k < 32; ++k) {
        if (!lanes[k]) continue;
        std::string what = std::string(lanes[k]->op) + " at " + site_str(lanes[k]->site) + " (arg " +
                           std::to_string(lanes[k]->uniform) + ")";
        if (!groups.empty() && groups.back().second == what && prev + 1 == k) {
          std::string& r = groups.back().first;
          size_t dash = r.rfind('-');
          size_t comma = r.rfind(',');
          if (dash != std::string::npos && (comma == std::string::npos || dash > comma)) r.erase(dash);
          r += "-" + std::to_string(k);
        } else {
          groups.push_back({std::to_string(k), what});
        }
        prev = k;
      }
      std::string m = "lanes of mask " + hex(c.mask) + " disagree:";
      for (auto& g : groups) m += "\n      lanes " + g.first + ": " + g.second;
      err(m);
    }
  }
  c.complete(lanes, c.mask);
  std::vector<Fiber*> woken;
  for (unsigned l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    Fiber* g = w->fibers[warp * 32 + l];
    g->state = State::Runnable;
    g->coll = nullptr;
    if (g != f) woken.push_back(g);
  }
  push_ordered(b, woken);
}

void* dynamic_shared() {
  Fiber* f = cur();
  return f->worker->block.dyn;
}

bool is_shared(const void* p, size_t n) {
  Fiber* f = cur();
  const Block& b = f->worker->block;
  auto q = static_cast<const unsigned char*>(p);
  return (b.tls && q >= b.tls && q + n <= b.tls + b.tlsSize) ||
         (q >= b.dyn && q + n <= b.dyn + b.dynSize);
}

void cp_async(void* dst, const void* src, int cpSize, int srcSize, Site site) {
  Fiber* f = cur();
  if (cpSize != 4 && cpSize != 8 && cpSize != 16) fail("cp.async size must be 4, 8 or 16", site);
  if (srcSize < 0 || srcSize > cpSize) fail("cp.async src-size out of [0, cp-size]", site);
  if (reinterpret_cast<uintptr_t>(dst) % cpSize || reinterpret_cast<uintptr_t>(src) % cpSize)
    fail("cp.async addresses must be aligned to the copy size", site);
  if (!is_shared(dst, cpSize)) fail("cp.async destination is not in shared memory", site);
  CpOp op;
  op.dst = static_cast<unsigned char*>(dst);
  op.size = cpSize;
  op.group = f->cpGroup;
  std::memset(op.data, 0, sizeof op.data);
  std::memcpy(op.data, src, size_t(srcSize));  // read now; lands in shared memory at the wait
  std::memset(dst, kPoison, size_t(cpSize));   // undefined until the matching wait
  f->cp.push_back(op);
}

void cp_async_commit() { cur()->cpGroup++; }

void cp_async_wait(int n) {
  Fiber* f = cur();
  // Groups g < cpGroup - n are complete; ops issued after the last commit belong to no group yet.
  long limit = long(f->cpGroup) - n;
  size_t k = 0;
  for (size_t i = 0; i < f->cp.size(); ++i) {
    CpOp& op = f->cp[i];
    if (long(op.group) < limit)
      std::memcpy(op.dst, op.data, size_t(op.size));
    else
      f->cp[k++] = op;
  }
  f->cp.resize(k);
}

unsigned active_mask() {
  Fiber* f = cur();
  Worker* w = f->worker;
  unsigned m = 0, exist = warp_exist_mask(w->block, f->hdr.warp);
  for (unsigned l = 0; l < 32; ++l)
    if ((exist >> l & 1) && w->fibers[f->hdr.warp * 32 + l]->state != State::Exited) m |= 1u << l;
  return m;
}

// ---- shuffles and votes -----------------------------------------------------------------------
namespace {
template <class SrcFn>
void shfl_complete(Collective* const* lanes, unsigned mask, SrcFn src) {
  for (unsigned l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    unsigned w = unsigned(lanes[l]->uniform);
    unsigned s = src(l, w, lanes[l]->arg);
    if (s >= 32 || !lanes[s]) {
      Fiber* f = cur();
      Block& b = f->worker->block;
      die_in_fiber(f, block_header(b, "warp collective error") + "  warp " +
                          std::to_string(f->hdr.warp) + ": lane " + std::to_string(l) + " reads lane " +
                          std::to_string(s) + " which is not in mask " + hex(mask) + " (" +
                          lanes[l]->op + " at " + site_str(lanes[l]->site) + ")\n");
    }
    std::memcpy(lanes[l]->out, lanes[s]->in, lanes[l]->size);
  }
}
}  // namespace

void shfl_complete_idx(Collective* const* lanes, unsigned mask) {
  shfl_complete(lanes, mask, [](unsigned l, unsigned w, long long a) {
    return (l & ~(w - 1)) + (unsigned(a) & (w - 1));
  });
}
void shfl_complete_up(Collective* const* lanes, unsigned mask) {
  shfl_complete(lanes, mask, [](unsigned l, unsigned w, long long a) {
    return (l & (w - 1)) >= unsigned(a) ? l - unsigned(a) : l;  // below the segment: own value
  });
}
void shfl_complete_down(Collective* const* lanes, unsigned mask) {
  shfl_complete(lanes, mask, [](unsigned l, unsigned w, long long a) {
    return (l & (w - 1)) + unsigned(a) < w ? l + unsigned(a) : l;  // past the segment: own value
  });
}
void shfl_complete_xor(Collective* const* lanes, unsigned mask) {
  shfl_complete(lanes, mask, [](unsigned l, unsigned w, long long a) {
    unsigned s = l ^ unsigned(a);
    return s >= (l & ~(w - 1)) + w ? l : s;  // later segments are out of reach: own value
  });
}
void vote_complete(Collective* const* lanes, unsigned mask) {
  unsigned ballot = 0, sum = 0, mn = ~0u, mx = 0;
  bool all = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    unsigned v = *static_cast<const unsigned*>(lanes[l]->in);
    if (v) ballot |= 1u << l;
    all = all && v;
    sum += v;
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  unsigned r = 0;
  switch (lanes[__builtin_ctz(mask)]->uniform) {
    case 0: r = ballot; break;
    case 1: r = ballot != 0; break;
    case 2: r = all; break;
    case 3: r = sum; break;
    case 4: r = mn; break;
    case 5: r = mx; break;
  }
  for (unsigned l = 0; l < 32; ++l)
    if (lanes[l]) *static_cast<unsigned*>(lanes[l]->out) = r;
}
void noop_complete(Collective* const*, unsigned) {}

// ---- launch -----------------------------------------------------------------------------------
void launch(const LaunchDesc& d) {
  Launch L;
  L.d = d;
  {
    std::lock_guard<std::mutex> g(gSettingsMu);
    init_settings_locked();
    L.sched = gSchedule;
  }
  L.name = d.name ? d.name : "";
  if (L.name.empty()) {
    // Found only for exported symbols (link executables with -rdynamic); else use launch_named.
    Dl_info info;
    if (dladdr(d.kernel, &info) && info.dli_sname && info.dli_saddr == d.kernel)
      L.name = demangle(info.dli_sname);
    if (L.name.empty()) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "<kernel at %p>", d.kernel);
      L.name = buf;
    }
  }
  const uint64_t nb = uint64_t(d.grid.x) * d.grid.y * d.grid.z;
  const uint64_t nt = uint64_t(d.block.x) * d.block.y * d.block.z;
  auto bad = [&](const std::string& m) {
    std::string msg = "cuemu: invalid launch of `" + L.name + "`: " + m;
    if (gAbort) {
      std::fprintf(stderr, "%s\n", msg.c_str());
      std::abort();
    }
    throw Error(msg);
  };
  if (nt == 0 || nt > 1024 || d.block.z > 64) bad("block " + fmt3(d.block.x, d.block.y, d.block.z) + " must have 1..1024 threads (z <= 64)");
  if (nb == 0 || d.grid.y > 65535 || d.grid.z > 65535) bad("grid " + fmt3(d.grid.x, d.grid.y, d.grid.z) + " is empty or too large");
  if (d.dynSmem > (size_t(227) << 10)) bad("dynamic shared memory " + std::to_string(d.dynSmem) + " B exceeds 227 KiB");
  L.nthreads = unsigned(nt);
  L.nblocks = unsigned(nb);
  Pool& p = pool();
  std::lock_guard<std::mutex> g(p.launchMu);
  int nw;
  {
    std::lock_guard<std::mutex> s(gSettingsMu);
    nw = gWorkers;
  }
  p.run(&L, nw);
  if (L.failed.load()) throw Error(L.error);
}

}  // namespace detail

// ---- settings API ---------------------------------------------------------------------------------
void set_schedule(Schedule s) {
  std::lock_guard<std::mutex> g(detail::gSettingsMu);
  detail::init_settings_locked();
  detail::gSchedule = s;
}
Schedule schedule() {
  std::lock_guard<std::mutex> g(detail::gSettingsMu);
  detail::init_settings_locked();
  return detail::gSchedule;
}
std::string schedule_name(Schedule s) {
  switch (s.order) {
    case Order::Forward: return "forward";
    case Order::Reverse: return "reverse";
    case Order::Random: return "random:" + std::to_string(s.seed);
  }
  return "?";
}
void set_workers(int n) {
  std::lock_guard<std::mutex> g(detail::gSettingsMu);
  detail::init_settings_locked();
  detail::gWorkers = std::max(1, n);
}
void set_abort_on_error(bool a) {
  std::lock_guard<std::mutex> g(detail::gSettingsMu);
  detail::init_settings_locked();
  detail::gAbort = a;
}

namespace {
struct PingPong {
  jmp_buf a, b;
  ucontext_t ua, ub;
  long n;
  bool uc;
};
PingPong* gPing;
void ping_main() {
  PingPong* p = gPing;
  for (;;) {
    if (p->uc)
      swapcontext(&p->ub, &p->ua);
    else if (_setjmp(p->b) == 0)
      _longjmp(p->a, 1);
  }
}
__attribute__((noinline)) void ping_once(PingPong& p) {
  if (p.uc)
    swapcontext(&p.ua, &p.ub);
  else if (_setjmp(p.a) == 0)
    _longjmp(p.b, 1);
}
__attribute__((noinline)) void ping_loop(PingPong& p, int iters) {
  for (int i = 0; i < iters; ++i) ping_once(p);
}
}  // namespace

double measure_switch_ns(bool ucontext, int iters) {
  PingPong p;
  p.uc = ucontext;
  gPing = &p;
  std::vector<unsigned char> stack(64 << 10);
  getcontext(&p.ub);
  p.ub.uc_stack.ss_sp = stack.data();
  p.ub.uc_stack.ss_size = stack.size();
  p.ub.uc_link = nullptr;
  makecontext(&p.ub, &ping_main, 0);
  // Enter once, then time round trips.
  if (ucontext)
    swapcontext(&p.ua, &p.ub);
  else if (_setjmp(p.a) == 0)
    setcontext(&p.ub);
  const auto t0 = std::chrono::steady_clock::now();
  ping_loop(p, iters);
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / (2.0 * iters);
}

}  // namespace cuemu
