// Tachyon Node-API binding: the only code that knows about Node.
//
// It converts JS values into the framework-free types of native/cpu (checking every one:
// native code never trusts JavaScript), calls op_* which validate and enqueue, and turns
// stream completions into promise resolutions through one thread-safe function per stream.
// Context-aware: all per-environment state lives in instance data, so the addon loads in
// worker_threads too.
#include <napi.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#endif

#include "../cpu/ops.h"
#include "../cpu/qops.h"
#include "../cpu/aops.h"
#include "tachyon/cuda_probe.h"

#ifndef TY_HAVE_CUDA
std::shared_ptr<ty::cpu::Device> ty::make_cuda_device(int) {
  throw ty::Error(ty::Code::BACKEND, "this build does not include the CUDA backend (nvcc was not found at build time, or TACHYON_CUDA=off)");
}
extern "C" int ty_cuda_device_count(char* reason, size_t n) {
  if (reason && n) std::snprintf(reason, n, "this build does not include the CUDA backend (nvcc was not found or TACHYON_CUDA=off)");
  return 0;
}
extern "C" const char* ty_cuda_archs(void) { return ""; }
#endif
#ifndef TY_HAVE_CUDA_EMU
std::shared_ptr<ty::cpu::Device> ty::make_cuda_emu_device(const std::string&, int) {
  throw ty::Error(ty::Code::BACKEND, "this build does not include the cuda-emu backend (the CUDA headers were not found at build time)");
}
#endif

namespace {

using namespace ty;
using ty::cpu::Core;
using ty::cpu::T;

// JS references released by other threads wait here until the JS thread can delete them.
struct Graveyard {
  std::mutex mu;
  std::vector<napi_ref> refs;
  std::atomic<bool> nonempty{false};
  void bury(napi_ref r) {
    std::lock_guard<std::mutex> lk(mu);
    refs.push_back(r);
    nonempty.store(true);
  }
  void sweep(napi_env env) {
    if (!nonempty.load()) return;
    std::vector<napi_ref> v;
    {
      std::lock_guard<std::mutex> lk(mu);
      v.swap(refs);
      nonempty.store(false);
    }
    for (auto r : v) napi_delete_reference(env, r);
  }
};

struct Instance {
  Napi::FunctionReference runtime_ctor, stream_ctor, tensor_ctor, error_ctor;
  std::shared_ptr<Graveyard> graveyard = std::make_shared<Graveyard>();
};

Instance& inst(Napi::Env env) { return *env.GetInstanceData<Instance>(); }

// Builds a KernelError (the class registered from lib/runtime) or a plain Error before that.
Napi::Error make_error(Napi::Env env, Code code, const std::string& msg, const std::string& op, const std::string& arg,
                       const char* backend = "cpu") {
  Instance& in = inst(env);
  Napi::Object opts = Napi::Object::New(env);
  opts.Set("code", code_name(code));
  opts.Set("op", op);
  opts.Set("backend", backend);
  if (!arg.empty()) opts.Set("arg", arg);
  if (!in.error_ctor.IsEmpty()) {
    Napi::Value e = in.error_ctor.New({Napi::String::New(env, msg), opts});
    return Napi::Error(env, e);
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", code_name(code));
  e.Set("op", op);
  e.Set("backend", backend);
  return e;
}

[[noreturn]] void throw_ty(Napi::Env env, const Error& e, const std::string& op) { throw make_error(env, e.code, e.what(), op, e.arg); }

[[noreturn]] void bad(const char* arg, const std::string& expected, Napi::Value got, Code code = Code::INVALID_ARG) {
  std::string desc;
  if (got.IsUndefined()) desc = "undefined";
  else if (got.IsNull()) desc = "null";
  else if (got.IsNumber()) {
    double d = got.As<Napi::Number>().DoubleValue();
    desc = (std::isnan(d) ? std::string("NaN") : std::isinf(d) ? std::string(d > 0 ? "Infinity" : "-Infinity") : std::to_string(d)) + " of type number";
  } else if (got.IsString()) desc = "'" + got.As<Napi::String>().Utf8Value() + "' of type string";
  else if (got.IsBoolean()) desc = std::string(got.ToBoolean() ? "true" : "false") + " of type boolean";
  else if (got.IsArray()) desc = "an array";
  else if (got.IsFunction()) desc = "a function";
  else desc = "an object";
  throw Error(code, "Expected " + expected + " for " + arg + " but received " + desc, arg);
}

double num(Napi::Value v, const char* arg) {
  if (!v.IsNumber()) bad(arg, "a number", v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) bad(arg, "a finite number", v);
  return d;
}

int64_t integer(Napi::Value v, const char* arg, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) bad(arg, "an integer", v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < (double)lo || d > (double)hi)
    bad(arg, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
  return (int64_t)d;
}

bool boolean(Napi::Value v, const char* arg) {
  if (!v.IsBoolean()) bad(arg, "a boolean", v);
  return v.ToBoolean();
}

DType dtype_arg(Napi::Value v, const char* arg) {
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    for (int i = 0; i < kDTypeCount; ++i)
      if (s == dtype_name((DType)i)) return (DType)i;
  }
  bad(arg, "one of f32, f16, bf16, fp8e4m3, fp8e5m2, int8, i32, int4, u8", v, Code::DTYPE);
}

std::vector<int64_t> shape_arg(Napi::Value v, const char* arg) {
  if (!v.IsArray()) bad(arg, "an array of non-negative integers", v, Code::SHAPE);
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > (uint32_t)cpu::kMaxDims) bad(arg, "at most 8 dimensions", v, Code::SHAPE);
  std::vector<int64_t> s(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) bad(arg, "an array of non-negative integers", v, Code::SHAPE);
    double d = e.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d < 0 || std::floor(d) != d || d > (double)((int64_t)1 << 40))
      throw Error(Code::SHAPE, std::string("Expected a non-negative integer no larger than 2^40 for ") + arg + "[" + std::to_string(i) +
                                   "] but received " + (std::isnan(d) ? std::string("NaN") : std::to_string(d)), arg);
    s[i] = (int64_t)d;
  }
  return s;
}

// ---------------------------------------------------------------------------------------
class RuntimeW : public Napi::ObjectWrap<RuntimeW> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeRuntime", {InstanceMethod<&RuntimeW::Info>("info"), InstanceMethod<&RuntimeW::Dispose>("dispose")});
  }
  RuntimeW(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RuntimeW>(info) {
    std::string backend = "cpu";
    try {
      int threads = (int)integer(info[0], "threads", 1, 1024);
      std::string isa = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
      cpu::Isa want;
      if (!cpu::isa_parse(isa.c_str(), &want)) bad("isa", "one of scalar, avx2, avx512", info[1]);
      cpu::Isa have = cpu::isa_detected();
      if ((int)want > (int)have)
        throw Error(Code::UNSUPPORTED, std::string("Expected an ISA this CPU supports (") + cpu::isa_name(have) +
                                           " or lower) for isa but received " + isa, "isa");
      // new NativeRuntime(threads, isa, backend?, {schedule?, device?})
      backend = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu";
      Napi::Object opts = info.Length() > 3 && info[3].IsObject() ? info[3].As<Napi::Object>() : Napi::Object::New(info.Env());
      std::shared_ptr<cpu::Device> dev;
      if (backend == "cuda-emu") {
        Napi::Value sv = opts.Get("schedule");
        if (!sv.IsUndefined() && !sv.IsString()) bad("schedule", "a string (forward, reverse or random:SEED)", sv);
        Napi::Value av = opts.Get("arch");
        const int arch = av.IsUndefined() ? 80 : (int)integer(av, "arch", 80, 90);
        dev = make_cuda_emu_device(sv.IsString() ? sv.As<Napi::String>().Utf8Value() : "forward", arch);
      } else if (backend == "cuda") {
        Napi::Value dv = opts.Get("device");
        dev = make_cuda_device(dv.IsUndefined() ? 0 : (int)integer(dv, "device", 0, 1023));
      } else if (backend != "cpu") {
        bad("backend", "one of cpu, cuda, cuda-emu", info[2]);
      }
      core_ = std::make_shared<cpu::RuntimeCore>(threads, want, std::move(dev));
    } catch (const Error& e) {
      // The backend the error belongs to: a device backend's own failure names it, an
      // unknown backend string is reported against cpu.
      throw make_error(info.Env(), e.code, e.what(), "loadRuntime", e.arg,
                       backend == "cuda" || backend == "cuda-emu" ? backend.c_str() : "cpu");
    }
  }
  Core core(const char* op) {
    if (!core_) throw Error(Code::DISPOSED, std::string("The runtime has been disposed; ") + op + " cannot run", "runtime");
    return core_;
  }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("disposed", core_ == nullptr);
    if (core_) {
      o.Set("threads", core_->pool.threads());
      o.Set("isa", cpu::isa_name(core_->isa));
      o.Set("backend", core_->backend());
      if (core_->device) o.Set("device", core_->device->describe());
      o.Set("parallelism", core_->device ? core_->device->parallelism() : core_->pool.threads());
    }
    return o;
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    core_.reset();  // the pool lives on while streams or queued ops still hold it
    return Napi::Value();  // undefined; no napi call (safe while a worker terminates)
  }
  Core core_;
};

// ---------------------------------------------------------------------------------------
struct Completion;

struct StreamCtx {
  std::unique_ptr<cpu::Stream> stream;
  Core core;
  Napi::ThreadSafeFunction tsfn;
  int pending = 0;        // JS-thread only
  bool released = false;  // JS-thread only
};

struct Completion {
  Napi::Promise::Deferred deferred;
  enum Kind { kSync, kRead, kTime } kind;
  napi_ref dst = nullptr;  // ArrayBuffer being filled (read)
  double value = 0;
  cpu::StreamStatus status;
  std::shared_ptr<StreamCtx> ctx;  // keeps the TSFN's owner alive until delivery
  explicit Completion(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

class StreamW : public Napi::ObjectWrap<StreamW> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeStream",
                       {InstanceMethod<&StreamW::Synchronize>("synchronize"), InstanceMethod<&StreamW::Timestamp>("timestamp"),
                        InstanceMethod<&StreamW::Reset>("reset"), InstanceMethod<&StreamW::Pending>("pending"),
                        InstanceMethod<&StreamW::Dispose>("dispose")});
  }
  StreamW(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StreamW>(info) {
    Napi::Env env = info.Env();
    try {
      if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(inst(env).runtime_ctor.Value()))
        bad("runtime", "a Runtime", info[0]);
      RuntimeW* rt = RuntimeW::Unwrap(info[0].As<Napi::Object>());
      ctx_ = std::make_shared<StreamCtx>();
      ctx_->core = rt->core("createStream");
      ctx_->stream = std::make_unique<cpu::Stream>("tachyon-stream");
      if (ctx_->core->device) ctx_->stream->attach(ctx_->core->device->create_stream());
      ctx_->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "tachyon-stream", 0, 1);
      ctx_->tsfn.Unref(env);  // an idle stream must not keep the process alive
    } catch (const Error& e) {
      throw_ty(env, e, "createStream");
    }
  }
  ~StreamW() override { shutdown(); }

  const std::shared_ptr<StreamCtx>& ctx(const char* op) {
    if (!ctx_) throw Error(Code::DISPOSED, std::string("The stream has been disposed; ") + op + " cannot run", "stream");
    return ctx_;
  }

  // Queues a completion point and returns its promise.
  static Napi::Value Complete(Napi::Env env, const std::shared_ptr<StreamCtx>& cp, Completion::Kind kind, std::function<void()> job, napi_ref dst = nullptr,
                              std::shared_ptr<double> value = nullptr) {
    inst(env).graveyard->sweep(env);
    StreamCtx& c = *cp;
    auto* comp = new Completion(env);
    comp->kind = kind;
    comp->dst = dst;
    comp->ctx = cp;
    Napi::Promise p = comp->deferred.Promise();
    if (c.pending++ == 0) c.tsfn.Ref(env);
    Napi::ThreadSafeFunction tsfn = c.tsfn;
    c.stream->enqueue_done(std::move(job), [comp, tsfn, value](const cpu::StreamStatus& st) mutable {
      comp->status = st;
      if (value) comp->value = *value;
      napi_status s = tsfn.BlockingCall(comp, &StreamW::Deliver);
      if (s != napi_ok) { /* environment is shutting down: nothing left to resolve */ }
    });
    return p;
  }

  static void Deliver(Napi::Env env, Napi::Function, Completion* c) {
    if (env != nullptr) {
      try {
        Napi::HandleScope scope(env);
        StreamCtx& ctx = *c->ctx;
        if (--ctx.pending == 0 && !ctx.released) ctx.tsfn.Unref(env);
        if (!c->status.ok) {
          c->deferred.Reject(make_error(env, c->status.code, c->status.message, c->status.op, c->status.arg, ctx.core->backend()).Value());
        } else if (c->kind == Completion::kRead) {
          napi_value ab;
          napi_get_reference_value(env, c->dst, &ab);
          c->deferred.Resolve(Napi::Value(env, ab));
        } else if (c->kind == Completion::kTime) {
          c->deferred.Resolve(Napi::Number::New(env, c->value));
        } else {
          c->deferred.Resolve(env.Undefined());
        }
        inst(env).graveyard->sweep(env);
      } catch (const Napi::Error&) {
        // JS execution is terminating (worker.terminate(), process exit): nobody is left
        // to receive the result. Never let the exception escape into libuv.
      }
      if (c->dst) napi_delete_reference(env, c->dst);
    }
    delete c;
  }

 private:
  void shutdown() {
    if (!ctx_) return;
    auto c = std::move(ctx_);
    c->stream.reset();  // drains queued work and joins the worker thread
    c->released = true;
    c->tsfn.Release();  // queued deliveries still run; they hold `c` alive
  }
  Napi::Value Synchronize(const Napi::CallbackInfo& info) {
    try {
      return Complete(info.Env(), ctx("synchronize"), Completion::kSync, nullptr);
    } catch (const Error& e) {
      throw_ty(info.Env(), e, "synchronize");
    }
  }
  Napi::Value Timestamp(const Napi::CallbackInfo& info) {
    try {
      auto v = std::make_shared<double>(0);
      const std::shared_ptr<StreamCtx>& c = ctx("timestamp");
      // On a device the clock is read once the device has finished the work queued before this
      // point (like an event recorded and waited on), not when the stream thread launched it.
      cpu::DeviceStream* ds = c->stream->device();
      return Complete(info.Env(), c, Completion::kTime, [v, ds] {
        if (ds) ds->synchronize();
        *v = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
      }, nullptr, v);
    } catch (const Error& e) {
      throw_ty(info.Env(), e, "timestamp");
    }
  }
  Napi::Value Reset(const Napi::CallbackInfo& info) {
    try {
      ctx("reset")->stream->reset();
    } catch (const Error& e) {
      throw_ty(info.Env(), e, "reset");
    }
    return Napi::Value();  // undefined; no napi call (safe while a worker terminates)
  }
  Napi::Value Pending(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), ctx_ ? (double)ctx_->stream->pending() : 0.0);
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    shutdown();
    return Napi::Value();  // undefined; no napi call (safe while a worker terminates)
  }
  std::shared_ptr<StreamCtx> ctx_;
};

// ---------------------------------------------------------------------------------------
class TensorW : public Napi::ObjectWrap<TensorW> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {InstanceMethod<&TensorW::Read>("read"), InstanceMethod<&TensorW::Write>("write"),
                        InstanceMethod<&TensorW::Dispose>("dispose"), InstanceMethod<&TensorW::Bytes>("bytes"),
                        InstanceMethod<&TensorW::IsExternal>("isExternal")});
  }
  // new NativeTensor(runtime, dtype, shape, source?: TypedArray, zeroCopy?: boolean, pinned?: boolean)
  // pinned (no source): on a device runtime, page-locked host memory the device can address (the
  // KV cache's swap space); on cpu, ordinary host memory.
  TensorW(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorW>(info) {
    Napi::Env env = info.Env();
    try {
      if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(inst(env).runtime_ctor.Value()))
        bad("runtime", "a Runtime", info[0]);
      Core core = RuntimeW::Unwrap(info[0].As<Napi::Object>())->core("tensor");
      DType dt = dtype_arg(info[1], "dtype");
      std::vector<int64_t> shape = shape_arg(info[2], "shape");
      int64_t n = cpu::check_shape(shape, dt, "shape");
      size_t bytes = dtype_bytes(dt, n);
      if (info.Length() < 4 || info[3].IsUndefined() || info[3].IsNull()) {
        const bool pinned = info.Length() > 5 && info[5].IsBoolean() && info[5].ToBoolean();
        if (core->device) {
          t_ = std::make_shared<cpu::Tensor>();
          t_->dtype = dt;
          t_->shape = shape;
          t_->buf = pinned ? core->device->allocate_pinned(bytes) : core->device->allocate(bytes);
        } else {
          t_ = cpu::make_tensor(dt, shape);
        }
        return;
      }
      if (info[3].IsObject() && info[3].As<Napi::Object>().InstanceOf(inst(env).tensor_ctor.Value())) {
        // A view: same storage, another shape (and dtype) of exactly the same byte size.
        T src = TensorW::Unwrap(info[3].As<Napi::Object>())->get("source");
        if (src->buf->space != core->space())
          throw Error(Code::BACKEND, std::string("Expected a tensor on backend ") + core->backend() + " for source but it lives on " +
                                         cpu::mem_space_name(src->buf->space), "source");
        if (src->buf->bytes != bytes)
          throw Error(Code::SHAPE, "Expected a view of " + std::to_string(src->buf->bytes) + " bytes but the shape holds " +
                                       std::to_string(bytes), "shape");
        t_ = std::make_shared<cpu::Tensor>();
        t_->dtype = dt;
        t_->shape = shape;
        t_->buf = src->buf;
        return;
      }
      if (!info[3].IsTypedArray()) bad("data", "a TypedArray", info[3]);
      Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
      size_t got = ta.ByteLength();
      if (got != bytes)
        throw Error(Code::SHAPE, "Expected " + std::to_string(bytes) + " bytes (" + std::to_string(n) + " " + dtype_name(dt) +
                                     " elements) for data but received " + std::to_string(got), "data");
      uint8_t* src = (uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset();
      bool zero_copy = info.Length() > 4 && info[4].IsBoolean() && info[4].ToBoolean();
      t_ = std::make_shared<cpu::Tensor>();
      t_->dtype = dt;
      t_->shape = shape;
      if (core->device) {
        // Device memory: always a copy (zeroCopy cannot alias a JS array there).
        t_->buf = core->device->allocate(bytes);
        core->device->upload(t_->buf->data, src, bytes);
      } else if (zero_copy && bytes > 0) {
        // Zero-copy: keep the ArrayBuffer alive with a reference that the last owner of the
        // buffer releases (on any thread) through the graveyard.
        napi_ref ref;
        napi_create_reference(env, ta.ArrayBuffer(), 1, &ref);
        auto gy = inst(env).graveyard;
        t_->buf = cpu::Buffer::wrap(src, bytes, [gy, ref] { gy->bury(ref); });
      } else {
        t_->buf = cpu::Buffer::allocate(bytes);
        if (bytes) std::memcpy(t_->buf->data, src, bytes);
      }
    } catch (const Error& e) {
      throw_ty(env, e, "tensor");
    }
  }
  T get(const char* arg) {
    if (!t_) throw Error(Code::DISPOSED, std::string("Tensor ") + arg + " has been disposed", arg);
    return t_;
  }

 private:
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    try {
      const auto& c = stream_arg(env, info[0]);
      T t = get("tensor");
      size_t bytes = t->buf->bytes;
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes);
      napi_ref ref;
      napi_create_reference(env, ab, 1, &ref);
      void* dst = ab.Data();
      if (!pinned_on_device(*c, t)) same_space(*c, t, "tensor");
      if (c->core->device && !pinned_on_device(*c, t)) {
        cpu::Stream* st = c->stream.get();
        Core core = c->core;
        return StreamW::Complete(env, c, Completion::kRead, [t, dst, bytes, st, core] {
          core->device->to_host(dst, t->buf->data, bytes, *st->device());
        }, ref);
      }
      if (c->core->device) {  // pinned host memory: wait for the kernels that write it, then copy
        cpu::Stream* st = c->stream.get();
        return StreamW::Complete(env, c, Completion::kRead, [t, dst, bytes, st] {
          st->device()->synchronize();
          if (bytes) std::memcpy(dst, t->buf->data, bytes);
        }, ref);
      }
      return StreamW::Complete(env, c, Completion::kRead, [t, dst, bytes] { if (bytes) std::memcpy(dst, t->buf->data, bytes); }, ref);
    } catch (const Error& e) {
      throw_ty(env, e, "read");
    }
  }
  // write(stream, typedArray): snapshot the data now (so the caller may reuse its array at
  // once), copy into the tensor in stream order.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    try {
      const auto& c = stream_arg(env, info[0]);
      T t = get("tensor");
      if (!info[1].IsTypedArray()) bad("data", "a TypedArray", info[1]);
      Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
      if (ta.ByteLength() != t->buf->bytes)
        throw Error(Code::SHAPE, "Expected " + std::to_string(t->buf->bytes) + " bytes for data but received " +
                                     std::to_string(ta.ByteLength()), "data");
      const bool pinned = pinned_on_device(*c, t);
      if (!pinned) same_space(*c, t, "tensor");
      auto snap = cpu::Buffer::allocate(t->buf->bytes);
      if (snap->bytes) std::memcpy(snap->data, (uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset(), snap->bytes);
      if (pinned) {  // pinned host memory: wait for the kernels that may still read it, then copy
        cpu::Stream* st = c->stream.get();
        c->stream->enqueue("write", [t, snap, st] {
          st->device()->synchronize();
          if (snap->bytes) std::memcpy(t->buf->data, snap->data, snap->bytes);
        });
      } else if (c->core->device) {
        cpu::Stream* st = c->stream.get();
        Core core = c->core;
        // The snapshot stays alive until the stream synchronizes the copy (the job holds it).
        c->stream->enqueue("write", [t, snap, st, core] {
          core->device->to_device(t->buf->data, snap->data, snap->bytes, *st->device());
          st->device()->synchronize();
        });
      } else {
        c->stream->enqueue("write", [t, snap] { if (snap->bytes) std::memcpy(t->buf->data, snap->data, snap->bytes); });
      }
    } catch (const Error& e) {
      throw_ty(env, e, "write");
    }
    return Napi::Value();
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    t_.reset();  // queued ops keep their own references
    return Napi::Value();  // undefined; no napi call (safe while a worker terminates)
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), t_ ? (double)t_->buf->bytes : 0.0);
  }
  Napi::Value IsExternal(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), t_ && t_->buf->external); }

 public:
  static const std::shared_ptr<StreamCtx>& stream_arg(Napi::Env env, Napi::Value v) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(inst(env).stream_ctor.Value())) bad("stream", "a Stream", v);
    return StreamW::Unwrap(v.As<Napi::Object>())->ctx("op");
  }
  static T tensor_arg(Napi::Env env, Napi::Value v, const char* arg, const StreamCtx& c, bool optional = false) {
    if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(inst(env).tensor_ctor.Value())) bad(arg, "a Tensor", v);
    T t = TensorW::Unwrap(v.As<Napi::Object>())->get(arg);
    same_space(c, t, arg);
    return t;
  }
  // For the CPU-only ops (their streams are checked by guard()): the tensor must be host memory.
  static T tensor_arg(Napi::Env env, Napi::Value v, const char* arg, bool optional = false) {
    if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(inst(env).tensor_ctor.Value())) bad(arg, "a Tensor", v);
    T t = TensorW::Unwrap(v.As<Napi::Object>())->get(arg);
    if (t->buf->space != cpu::MemSpace::host)
      throw Error(Code::BACKEND, std::string("Expected a tensor on backend cpu for ") + arg + " but it lives on " +
                                     cpu::mem_space_name(t->buf->space), arg);
    return t;
  }
  // Pinned host memory owned by a device runtime (its KV swap space): read and written by the host
  // in stream order, and by the swap kernel only.
  static bool pinned_on_device(const StreamCtx& c, const T& t) {
    return c.core->device && t->buf->space == cpu::MemSpace::host && t->buf->pinned;
  }
  // Unwraps a tensor without a memory-space check: for the one argument (kvSwap's host) whose
  // space the op checks itself.
  static T tensor_arg_any(Napi::Env env, Napi::Value v, const char* arg) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(inst(env).tensor_ctor.Value())) bad(arg, "a Tensor", v);
    return TensorW::Unwrap(v.As<Napi::Object>())->get(arg);
  }
  // A tensor must live where the stream's runtime computes (a cpu tensor on a cuda stream would
  // be a host pointer handed to a kernel, and the reverse a device pointer read by the CPU).
  static void same_space(const StreamCtx& c, const T& t, const char* arg) {
    if (t->buf->space != c.core->space())
      throw Error(Code::BACKEND, std::string("Expected a tensor on backend ") + c.core->backend() + " for " + arg +
                                     " but it lives on " + cpu::mem_space_name(t->buf->space) +
                                     " (copy it with tensor.read() and runtime.tensor())", arg);
  }

 private:
  T t_;
};

// ---------------------------------------------------------------------------------------
// Ops: op(stream, ...tensors, ...scalars). Each wrapper converts and forwards.
// The ops a device runtime (cuda, cuda-emu) runs; the others raise E_UNSUPPORTED there.
bool device_op(const char* op) {
  static const char* const ops[] = {
      "matmul", "binary", "siluMul", "rmsNorm", "rope", "softmax", "embedding", "copy", "emuSelftest",
      // paged KV cache and attention (kvSwap raises its own E_UNSUPPORTED naming the host buffer)
      "kvAppend", "attention", "attentionMerge", "kvCopyBlocks", "kvSwap",
      // quantized GEMM family (weights in the device layout; see cpu::Device in device.h)
      "qpack", "qmatmul", "qmatmulGrouped", "moeCombine",
      // sampling family (sample: device runtimes only, the cpu backend samples in lib/ops/sample.ts)
      "sample",
  };
  for (const char* o : ops)
    if (std::strcmp(o, op) == 0) return true;
  return false;
}
template <class F>
Napi::Value guard(const Napi::CallbackInfo& info, const char* op, F&& f) {
  Napi::Env env = info.Env();
  const char* backend = "cpu";
  try {
    inst(env).graveyard->sweep(env);
    StreamCtx& c = *TensorW::stream_arg(env, info[0]);
    backend = c.core->backend();
    if (c.core->device && !device_op(op))
      throw Error(Code::UNSUPPORTED, std::string("The op ") + op + " is not implemented on backend " + backend +
                                         " yet (the CUDA kernels for the hot path are in progress); use backend: 'cpu' for it");
    f(env, c);
  } catch (const Error& e) {
    throw make_error(env, e.code, e.what(), op, e.arg, backend);
  } catch (const std::bad_alloc&) {
    throw make_error(env, Code::OOM, "Out of host memory", op, "");
  }
  return Napi::Value();
}

#define TENSOR(i, name) TensorW::tensor_arg(env, info[i], name, c)
#define OPT_TENSOR(i, name) TensorW::tensor_arg(env, info[i], name, c, true)

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guard(info, "matmul", [&](Napi::Env env, StreamCtx& c) {
    cpu::GemmOpts o;
    o.b_trans = boolean(info[5], "transB");
    o.alpha = (float)num(info[6], "alpha");
    o.beta = (float)num(info[7], "beta");
    cpu::op_gemm(c.core, *c.stream, TENSOR(1, "a"), TENSOR(2, "b"), OPT_TENSOR(3, "bias"), TENSOR(4, "out"), o);
  });
}
Napi::Value Binary(const Napi::CallbackInfo& info) {
  return guard(info, "binary", [&](Napi::Env env, StreamCtx& c) {
    int64_t op = integer(info[1], "op", 0, 1);
    cpu::op_binary(c.core, *c.stream, (BinaryOp)op, TENSOR(2, "a"), TENSOR(3, "b"), TENSOR(4, "out"));
  });
}
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  return guard(info, "siluMul", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_silu_mul(c.core, *c.stream, TENSOR(1, "gate"), TENSOR(2, "up"), TENSOR(3, "out"));
  });
}
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guard(info, "rmsNorm", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_rms_norm(c.core, *c.stream, TENSOR(1, "x"), OPT_TENSOR(2, "weight"), (float)num(info[3], "eps"), TENSOR(4, "out"));
  });
}
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guard(info, "rope", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_rope(c.core, *c.stream, TENSOR(1, "x"), TENSOR(2, "positions"), integer(info[3], "rotaryDim", -1, 1 << 20),
                 (float)num(info[4], "freqBase"), (float)num(info[5], "freqScale"), boolean(info[6], "neox"));
  });
}
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  return guard(info, "softmax", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_softmax(c.core, *c.stream, TENSOR(1, "x"), (float)num(info[2], "scale"), TENSOR(3, "out"));
  });
}
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guard(info, "embedding", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_embedding(c.core, *c.stream, TENSOR(1, "table"), TENSOR(2, "ids"), TENSOR(3, "out"));
  });
}
// sample(stream, logits, params: Float64Array [rows * 5] | null, logprobs: boolean)
//   -> Promise<ArrayBuffer>, device runtimes only (on cpu, lib/ops/sample.ts samples in
// TypeScript with the same core the Sampler uses). params: per row temperature, topP, minP, u,
// topK (null: argmax of every row). The buffer is cpu::Device::sample's result: the fault word
// (u64), i32 tokens [rows], then f32 logprobs [rows] when asked. lib/ops/sample.ts validates
// everything first and words a bad row's error; this checks again (native never trusts JS).
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Value promise;
  guard(info, "sample", [&](Napi::Env env, StreamCtx& c) {
    if (!c.core->device)
      throw Error(Code::UNSUPPORTED, "The native sample op runs on device backends; on cpu, lib/ops/sample.ts samples in TypeScript",
                  "stream");
    T logits = TENSOR(1, "logits");
    if (logits->dtype != DType::f32 && logits->dtype != DType::f16 && logits->dtype != DType::bf16)
      throw Error(Code::DTYPE, std::string("Expected an f32, f16 or bf16 tensor for logits but received ") + dtype_name(logits->dtype),
                  "logits");
    if (logits->shape.size() != 1 && logits->shape.size() != 2)
      throw Error(Code::SHAPE, "Expected logits of shape [rows, vocab] or [vocab] but received " + logits->shape_str(), "logits");
    const int64_t vocab = logits->shape.back();
    const int64_t rows = logits->shape.size() == 2 ? logits->shape[0] : 1;
    if (vocab < 1 || vocab > ((int64_t)1 << 21))
      throw Error(Code::UNSUPPORTED, "Expected a vocabulary in [1, 2^21] for logits but received " + std::to_string(vocab), "logits");
    if (rows > INT32_MAX) throw Error(Code::SHAPE, "Expected at most 2^31 - 1 rows of logits", "logits");
    const bool want_lp = boolean(info[3], "logprobs");
    const bool argmax = info[2].IsNull() || info[2].IsUndefined();
    std::vector<cpu::Device::SampleRowParams> params;
    if (!argmax) {
      if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
        bad("params", "a Float64Array of rows x 5 numbers (temperature, topP, minP, u, topK)", info[2]);
      Napi::Float64Array pa = info[2].As<Napi::Float64Array>();
      if ((int64_t)pa.ElementLength() != rows * 5)
        throw Error(Code::SHAPE, "Expected " + std::to_string(rows * 5) + " numbers (5 per row of logits) for params but received " +
                                     std::to_string(pa.ElementLength()), "params");
      params.resize((size_t)rows);
      for (int64_t r = 0; r < rows; ++r) {
        const double* d = pa.Data() + r * 5;
        const double k = d[4];
        if (!(k >= 0 && k <= (double)INT32_MAX && std::floor(k) == k))
          throw Error(Code::INVALID_ARG, "Expected an integer in [0, 2^31) for params[" + std::to_string(r) + "].topK",
                      "params[" + std::to_string(r) + "].topK");
        params[(size_t)r] = cpu::Device::SampleRowParams{d[0], d[1], d[2], d[3], (int32_t)k};
      }  // the ranges are checked with the kernel's sample_params_check before the launch
    }
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cpu::Device::sample_out_bytes(rows, want_lp));
    void* dst = ab.Data();
    const DType dt = logits->dtype;
    cpu::device_enqueue(c.core, *c.stream, "sample", {logits},
                        [dt, rows, vocab, want_lp, argmax, params = std::move(params), logits, dst](cpu::Device& d, cpu::DeviceStream& ds) {
                          cpu::Device::SampleOpArgs a;
                          a.dtype = dt;
                          a.rows = rows;
                          a.vocab = vocab;
                          a.logits = logits->buf->data;
                          a.params = argmax ? nullptr : params.data();
                          a.logprob = want_lp;
                          d.sample(a, dst, ds);  // writes dst (the ArrayBuffer, alive until the completion below)
                        });
    napi_ref ref;
    napi_create_reference(env, ab, 1, &ref);
    promise = StreamW::Complete(env, TensorW::stream_arg(env, info[0]), Completion::kRead, nullptr, ref);
  });
  return promise;
}
Napi::Value Copy(const Napi::CallbackInfo& info) {
  return guard(info, "copy", [&](Napi::Env env, StreamCtx& c) { cpu::op_copy(c.core, *c.stream, TENSOR(1, "src"), TENSOR(2, "dst")); });
}
// emuSelftest(stream, kind): launches a kernel that breaks a CUDA rule on purpose (cuda-emu only).
Napi::Value EmuSelftest(const Napi::CallbackInfo& info) {
  return guard(info, "emuSelftest", [&](Napi::Env env, StreamCtx& c) {
    if (!info[1].IsString()) bad("kind", "a string", info[1]);
    std::string kind = info[1].As<Napi::String>().Utf8Value();
    if (!c.core->device) throw Error(Code::UNSUPPORTED, "emuSelftest runs only on backend cuda-emu", "stream");
    cpu::Stream* st = c.stream.get();
    Core core = c.core;
    st->enqueue("emuSelftest", [core, st, kind] { core->device->selftest(kind, *st->device()); });
  });
}
Napi::Value Probe(const Napi::CallbackInfo& info) {
  return guard(info, "probe", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_probe(c.core, *c.stream, (int)integer(info[1], "kind", 0, 3), integer(info[2], "iters", 1, (int64_t)1 << 40),
                  OPT_TENSOR(3, "buf"), TENSOR(4, "result"));
  });
}

// Quantized weights. A format arrives as a plain object: {kind: 'int8'|'int4', group,
// asym, scaleDtype} or {kind: 'fp8e4m3'|'fp8e5m2', scaleBlock, act}; every field is
// checked here, and the format as a whole (against the shape) by the op.
std::string str_field(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
}
cpu::WeightFormat format_arg(Napi::Value v, const char* arg) {
  if (!v.IsObject()) bad(arg, "a format object", v);
  Napi::Object o = v.As<Napi::Object>();
  cpu::WeightFormat f;
  const std::string k = str_field(o, "kind");
  if (k == "fp8e4m3" || k == "fp8e5m2") {
    f.fp8 = true;
    f.f8.dtype = k == "fp8e4m3" ? DType::fp8e4m3 : DType::fp8e5m2;
    const std::string sb = str_field(o, "scaleBlock"), act = str_field(o, "act");
    if (sb == "tensor") f.f8.scale = Fp8Scale::tensor;
    else if (sb == "channel") f.f8.scale = Fp8Scale::channel;
    else if (sb == "block128") f.f8.scale = Fp8Scale::block128;
    else bad("format.scaleBlock", "'tensor', 'channel' or 'block128'", o.Get("scaleBlock"));
    if (act == "w8a16") f.act = Fp8Act::w8a16;
    else if (act == "w8a8") f.act = Fp8Act::w8a8;
    else bad("format.act", "'w8a16' or 'w8a8'", o.Get("act"));
    return f;
  }
  if (k == "int8") f.q.kind = QKind::int8;
  else if (k == "int4") f.q.kind = QKind::int4;
  else if (k == "q4k") f.q.kind = QKind::q4k;
  else if (k == "q6k") f.q.kind = QKind::q6k;
  else bad("format.kind", "'int8', 'int4', 'q4k', 'q6k', 'fp8e4m3' or 'fp8e5m2'", o.Get("kind"));
  Napi::Value gu = o.Get("gateUp");
  f.gate_up = gu.IsUndefined() ? false : boolean(gu, "format.gateUp");
  f.q.group = (int32_t)integer(o.Get("group"), "format.group", 0, 1 << 20);
  f.q.asym = boolean(o.Get("asym"), "format.asym");
  f.q.scale_dtype = dtype_arg(o.Get("scaleDtype"), "format.scaleDtype");
  return f;
}
constexpr int64_t kMaxDim = (int64_t)1 << 40;

// packedBytes(format, N, K, backend = 'cpu'): the device backends have their own layout.
Napi::Value PackedBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    cpu::WeightFormat f = format_arg(info[0], "format");
    bool device = false;
    if (!info[3].IsUndefined()) {
      const std::string b = info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "";
      if (b == "cuda" || b == "cuda-emu") device = true;
      else if (b != "cpu") bad("backend", "'cpu', 'cuda' or 'cuda-emu'", info[3]);
    }
    return Napi::Number::New(env, (double)cpu::packed_bytes(f, integer(info[1], "N", 1, kMaxDim), integer(info[2], "K", 1, kMaxDim),
                                                            device));
  } catch (const Error& e) {
    throw_ty(env, e, "packedBytes");
  }
}
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  return guard(info, "quantize", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_quantize(c.core, *c.stream, TENSOR(1, "weights"), format_arg(info[2], "format"), TENSOR(3, "out"), OPT_TENSOR(4, "stats"));
  });
}
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  return guard(info, "dequantize", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_dequantize(c.core, *c.stream, TENSOR(1, "weights"), format_arg(info[2], "format"), integer(info[3], "N", 1, kMaxDim),
                       integer(info[4], "K", 1, kMaxDim), TENSOR(5, "out"));
  });
}
// The plain parts arrive as an object {codes, scales, mins?, superD?, superDmin?}.
// They must live where the stream's runtime computes (qpack runs on the device backends too).
cpu::PlainTensors plain_arg(Napi::Env env, Napi::Value v, const StreamCtx& c) {
  if (!v.IsObject()) bad("plain", "an object of Tensors {codes, scales, mins, superD, superDmin}", v);
  Napi::Object o = v.As<Napi::Object>();
  cpu::PlainTensors p;
  p.codes = TensorW::tensor_arg(env, o.Get("codes"), "codes", c);
  p.scales = TensorW::tensor_arg(env, o.Get("scales"), "scales", c);
  p.mins = TensorW::tensor_arg(env, o.Get("mins"), "mins", c, true);
  p.super_d = TensorW::tensor_arg(env, o.Get("superD"), "superD", c, true);
  p.super_dmin = TensorW::tensor_arg(env, o.Get("superDmin"), "superDmin", c, true);
  return p;
}
Napi::Value QPack(const Napi::CallbackInfo& info) {
  return guard(info, "qpack", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_qpack(c.core, *c.stream, plain_arg(env, info[1], c), format_arg(info[2], "format"), integer(info[3], "N", 1, kMaxDim),
                  integer(info[4], "K", 1, kMaxDim), TENSOR(5, "out"));
  });
}
Napi::Value QUnpack(const Napi::CallbackInfo& info) {
  return guard(info, "qunpack", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_qunpack(c.core, *c.stream, TENSOR(1, "weights"), format_arg(info[2], "format"), integer(info[3], "N", 1, kMaxDim),
                    integer(info[4], "K", 1, kMaxDim), plain_arg(env, info[5], c));
  });
}
Napi::Value GgufImport(const Napi::CallbackInfo& info) {
  return guard(info, "ggufImport", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_gguf_import(c.core, *c.stream, (int32_t)integer(info[1], "type", 0, 1 << 20), TENSOR(2, "blocks"),
                        integer(info[3], "N", 1, kMaxDim), integer(info[4], "K", 1, kMaxDim), TENSOR(5, "out"));
  });
}
Napi::Value FuseGateUp(const Napi::CallbackInfo& info) {
  return guard(info, "fuseGateUp", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_fuse_gate_up(c.core, *c.stream, TENSOR(1, "gate"), TENSOR(2, "up"), format_arg(info[3], "format"),
                         integer(info[4], "N", 1, kMaxDim), integer(info[5], "K", 1, kMaxDim), TENSOR(6, "out"));
  });
}
Napi::Value QMatmulGrouped(const Napi::CallbackInfo& info) {
  return guard(info, "qmatmulGrouped", [&](Napi::Env env, StreamCtx& c) {
    if (!info[2].IsArray()) bad("experts", "an array of packed weight Tensors", info[2]);
    Napi::Array arr = info[2].As<Napi::Array>();
    if (arr.Length() > (1u << 16)) bad("experts", "at most 65536 experts", info[2]);
    std::vector<T> experts;
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      const std::string arg = "experts[" + std::to_string(i) + "]";
      experts.push_back(TensorW::tensor_arg(env, arr.Get(i), arg.c_str(), c));
    }
    cpu::op_qmatmul_grouped(c.core, *c.stream, TENSOR(1, "a"), experts, format_arg(info[3], "format"),
                            integer(info[4], "N", 1, kMaxDim), integer(info[5], "K", 1, kMaxDim), TENSOR(6, "rows"),
                            TENSOR(7, "offsets"), OPT_TENSOR(8, "bias"), TENSOR(9, "out"));
  });
}
Napi::Value MoeCombine(const Napi::CallbackInfo& info) {
  return guard(info, "moeCombine", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_moe_combine(c.core, *c.stream, TENSOR(1, "y"), TENSOR(2, "slot"), TENSOR(3, "weights"),
                        integer(info[4], "k", 1, 1 << 16), info[5].ToBoolean(), TENSOR(6, "out"));
  });
}
Napi::Value QMatmul(const Napi::CallbackInfo& info) {
  return guard(info, "qmatmul", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_qmatmul(c.core, *c.stream, TENSOR(1, "a"), TENSOR(2, "weights"), format_arg(info[3], "format"),
                    integer(info[4], "N", 1, kMaxDim), integer(info[5], "K", 1, kMaxDim), OPT_TENSOR(6, "bias"),
                    OPT_TENSOR(7, "residual"), TENSOR(8, "out"));
  });
}

// Paged KV cache and attention. A cache arrives as {dtype, layers, blocks, kvHeads,
// blockSize, headDim, data: Tensor(u8), scales: Tensor(f32) | null}; a plan is an External
// holding the native plan (its page table copied in).
KvCache kv_geometry(Napi::Value v) {
  if (!v.IsObject()) bad("cache", "a KV cache object", v);
  Napi::Object o = v.As<Napi::Object>();
  KvCache c;
  c.dtype = dtype_arg(o.Get("dtype"), "cache.dtype");
  c.layers = (int32_t)integer(o.Get("layers"), "cache.layers", 1, 1 << 16);
  c.blocks = (int32_t)integer(o.Get("blocks"), "cache.blocks", 1, 1 << 30);
  c.kvHeads = (int32_t)integer(o.Get("kvHeads"), "cache.kvHeads", 1, 1 << 12);
  c.blockSize = (int32_t)integer(o.Get("blockSize"), "cache.blockSize", 1, 1024);
  c.headDim = (int32_t)integer(o.Get("headDim"), "cache.headDim", 1, 1 << 12);
  return c;
}
cpu::KvCacheT kv_cache_arg(Napi::Env env, Napi::Value v, const StreamCtx& c) {
  KvCache g = kv_geometry(v);
  Napi::Object o = v.As<Napi::Object>();
  return cpu::make_kv_cache(g, TensorW::tensor_arg(env, o.Get("data"), "cache.data", c),
                            TensorW::tensor_arg(env, o.Get("scales"), "cache.scales", c, true));
}
struct PlanHolder {
  static constexpr uint32_t kMagic = 0x7459504c;  // identifies our Externals
  uint32_t magic = kMagic;
  std::shared_ptr<cpu::PlanT> plan;
};
std::shared_ptr<cpu::PlanT> plan_arg(Napi::Value v) {
  if (!v.IsExternal()) bad("plan", "an attention plan (from planAttention)", v);
  auto* h = v.As<Napi::External<PlanHolder>>().Data();
  if (!h || h->magic != PlanHolder::kMagic) bad("plan", "an attention plan (from planAttention)", v);
  return h->plan;
}
std::vector<int32_t> i32_array(Napi::Value v, const char* arg) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) bad(arg, "an Int32Array", v);
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

Napi::Value KvCacheSizes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    size_t bytes;
    int64_t ns;
    cpu::kv_cache_sizes(kv_geometry(info[0]), &bytes, &ns);
    Napi::Object o = Napi::Object::New(env);
    o.Set("dataBytes", (double)bytes);
    o.Set("scaleCount", (double)ns);
    return o;
  } catch (const Error& e) {
    throw_ty(env, e, "kvCache");
  }
}
Napi::Value PlanAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    KvCache g = kv_geometry(info[0]);
    const int32_t qHeads = (int32_t)integer(info[1], "qHeads", 1, 1 << 12);
    std::vector<int32_t> qo = i32_array(info[2], "qoIndptr"), ip = i32_array(info[3], "indptr"),
                         ix = i32_array(info[4], "indices"), lp = i32_array(info[5], "lastPageLen");
    const int32_t threads = (int32_t)integer(info[6], "threads", 1, 1024);
    const int32_t split = (int32_t)integer(info[7], "splitTokens", 0, 1 << 30);
    if (ip.empty()) bad("indptr", "an Int32Array of batch + 1 offsets", info[3]);
    const int32_t batch = (int32_t)ip.size() - 1;
    if ((int64_t)qo.size() != batch + 1)
      throw Error(Code::SHAPE, "Expected " + std::to_string(batch + 1) + " elements for qoIndptr (batch + 1) but received " +
                                   std::to_string(qo.size()), "qoIndptr");
    if ((int64_t)lp.size() != batch)
      throw Error(Code::SHAPE, "Expected " + std::to_string(batch) + " elements for lastPageLen (batch) but received " +
                                   std::to_string(lp.size()), "lastPageLen");
    auto plan = cpu::make_attention_plan(batch, qo.data(), ip.data(), ix.data(), (int64_t)ix.size(), lp.data(), g.blockSize,
                                         qHeads, g.kvHeads, g.headDim, threads, split);
    auto* h = new PlanHolder();
    h->plan = std::move(plan);
    Napi::Object o = Napi::Object::New(env);
    o.Set("handle", Napi::External<PlanHolder>::New(env, h, [](Napi::Env, PlanHolder* p) { delete p; }));
    o.Set("totalQ", h->plan->plan.totalQ);
    o.Set("workItems", h->plan->plan.nWork);
    o.Set("merges", h->plan->plan.nMerge);
    return o;
  } catch (const Error& e) {
    throw_ty(env, e, "planAttention");
  }
}
Napi::Value KvAppend(const Napi::CallbackInfo& info) {
  return guard(info, "kvAppend", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_kv_append(c.core, *c.stream, kv_cache_arg(env, info[1], c), (int32_t)integer(info[2], "layer", 0, 1 << 16),
                      TENSOR(3, "k"), TENSOR(4, "v"), TENSOR(5, "slots"));
  });
}
Napi::Value Attention(const Napi::CallbackInfo& info) {
  return guard(info, "attention", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_attention(c.core, *c.stream, plan_arg(info[1]), kv_cache_arg(env, info[2], c), (int32_t)integer(info[3], "layer", 0, 1 << 16),
                      TENSOR(4, "q"), TENSOR(5, "out"), OPT_TENSOR(6, "lse"), (float)num(info[7], "smScale"),
                      (float)num(info[8], "softCap"), (int32_t)integer(info[9], "window", 0, INT32_MAX));
  });
}
Napi::Value AttentionMerge(const Napi::CallbackInfo& info) {
  return guard(info, "attentionMerge", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_attention_merge(c.core, *c.stream, TENSOR(1, "oA"), TENSOR(2, "lseA"), TENSOR(3, "oB"), TENSOR(4, "lseB"),
                            TENSOR(5, "out"), TENSOR(6, "lse"));
  });
}
Napi::Value KvSwap(const Napi::CallbackInfo& info) {
  return guard(info, "kvSwap", [&](Napi::Env env, StreamCtx& c) {
    // host: on a device runtime, its pinned swap space (op_kv_swap checks where it lives).
    cpu::op_kv_swap(c.core, *c.stream, kv_cache_arg(env, info[1], c), TENSOR(2, "blocks"),
                    c.core->device ? TensorW::tensor_arg_any(env, info[3], "host") : TENSOR(3, "host"), boolean(info[4], "out"));
  });
}
Napi::Value KvBlockHostBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    KvCache g = kv_geometry(info[0]);
    size_t bytes;
    int64_t ns;
    cpu::kv_cache_sizes(g, &bytes, &ns);
    return Napi::Number::New(env, (double)kv_block_host_bytes(g));
  } catch (const Error& e) {
    throw_ty(env, e, "kvSwap");
  }
}
Napi::Value KvCopyBlocks(const Napi::CallbackInfo& info) {
  return guard(info, "kvCopyBlocks", [&](Napi::Env env, StreamCtx& c) {
    cpu::op_kv_copy_blocks(c.core, *c.stream, kv_cache_arg(env, info[1], c), TENSOR(2, "pairs"));
  });
}

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected a constructor for errorClass");
  inst(info.Env()).error_ctor = Napi::Persistent(info[0].As<Napi::Function>());
  return Napi::Value();  // undefined; no napi call (safe while a worker terminates)
}

Napi::Value Doctor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpu", cpu::cpu_brand());
  o.Set("isaDetected", cpu::isa_name(cpu::isa_detected()));
  o.Set("hardwareThreads", (double)std::thread::hardware_concurrency());
#ifdef TY_HAVE_CUDA_EMU
  o.Set("cudaEmuCompiled", true);
#else
  o.Set("cudaEmuCompiled", false);
#endif
#ifdef TY_HAVE_CUDA
  o.Set("cudaCompiled", true);
#else
  o.Set("cudaCompiled", false);
#endif
  o.Set("cudaArchs", ty_cuda_archs());
  char reason[256] = {0};
  int n = ty_cuda_device_count(reason, sizeof reason);
  o.Set("cudaDevices", n);
  o.Set("cudaReason", reason);
#ifdef __VERSION__
  o.Set("compiler", __VERSION__);
#endif
  return o;
}

// mapFile(path, offset?, length?, limit): a read-only private mapping (PROT_READ, MAP_PRIVATE)
// of the file, or of bytes [offset, offset+length), as an external ArrayBuffer.
// Returns { buffer, delta, fileSize }: the buffer starts at the page boundary at or below
// `offset` and the requested bytes begin `delta` bytes into it. When the mapping would exceed
// `limit` bytes (Node 20's N-API builds external ArrayBuffers through Buffer, capped at
// buffer.constants.MAX_LENGTH; over it, creation fails and the finalizer runs twice), nothing
// is mapped and buffer is undefined: the caller maps smaller ranges instead.
// The mapping lives as long as the ArrayBuffer: its finalizer munmaps, so views and
// zero-copy tensors (which reference the ArrayBuffer) can never outlive the pages.
// Failures are KernelErrors with code E_IO and arg 'path' (lib/runtime/mmap.ts).
Napi::Error io_error(Napi::Env env, const std::string& msg) {
  Instance& in = inst(env);
  Napi::Object opts = Napi::Object::New(env);
  opts.Set("code", "E_IO");
  opts.Set("op", "mapFile");
  opts.Set("backend", "cpu");
  opts.Set("arg", "path");
  if (!in.error_ctor.IsEmpty()) return Napi::Error(env, in.error_ctor.New({Napi::String::New(env, msg), opts}));
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", "E_IO");
  e.Set("op", "mapFile");
  e.Set("arg", "path");
  return e;
}

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  int64_t offset = 0, length = -1, limit = 0;
  try {
    if (!info[0].IsString()) bad("path", "a file path string", info[0]);
    path = info[0].As<Napi::String>().Utf8Value();
    const int64_t kMax = (int64_t)1 << 53;
    if (info.Length() > 1 && !info[1].IsUndefined()) offset = integer(info[1], "offset", 0, kMax);
    if (info.Length() > 2 && !info[2].IsUndefined()) length = integer(info[2], "length", 0, kMax);
    limit = integer(info[3], "limit", 0, kMax);
  } catch (const Error& e) {
    throw_ty(env, e, "mapFile");
  }
#ifdef _WIN32
  throw make_error(env, Code::UNSUPPORTED, "mapFile is not implemented on Windows yet", "mapFile", "path");
#else
  auto fail = [&](const std::string& what, int err) -> Napi::Error {
    return io_error(env, "Cannot map " + path + ": " + what + (err ? std::string(": ") + std::strerror(err) : std::string()));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail("open failed", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw fail("stat failed", err);
  }
  const char* why = S_ISDIR(st.st_mode) ? "it is a directory (EISDIR)"
                    : !S_ISREG(st.st_mode) ? "not a regular file"
                    : st.st_size <= 0      ? "the file is empty"
                                           : nullptr;
  if (why) {
    ::close(fd);
    throw fail(why, 0);
  }
  const int64_t file_size = (int64_t)st.st_size;
  if (length < 0) length = file_size - offset;
  if (offset > file_size || length > file_size - offset || length == 0) {
    ::close(fd);
    throw make_error(env, Code::INVALID_ARG,
                     "Expected a non-empty range within the " + std::to_string(file_size) + " bytes of " + path +
                         " but received offset " + std::to_string(offset) + ", length " + std::to_string(length),
                     "mapFile", "offset");
  }
  const int64_t page = (int64_t)::sysconf(_SC_PAGESIZE);
  const int64_t start = offset / page * page;
  const int64_t delta = offset - start;
  const size_t size = (size_t)(delta + length);
  Napi::Object out = Napi::Object::New(env);
  out.Set("delta", (double)delta);
  out.Set("fileSize", (double)file_size);
  if ((int64_t)size > limit) {
    ::close(fd);
    return out;  // too large for one external ArrayBuffer here: no buffer
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, (off_t)start);
  int err = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (p == MAP_FAILED) throw fail("mmap failed", err);
  out.Set("buffer", Napi::ArrayBuffer::New(
                        env, p, size,
                        [](Napi::Env, void* data, size_t* len) {
                          ::munmap(data, *len);
                          delete len;
                        },
                        new size_t(size)));
  return out;
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* in = new Instance();
  env.SetInstanceData(in);
  Napi::Function rt = RuntimeW::Init(env), st = StreamW::Init(env), te = TensorW::Init(env);
  in->runtime_ctor = Napi::Persistent(rt);
  in->stream_ctor = Napi::Persistent(st);
  in->tensor_ctor = Napi::Persistent(te);
  exports.Set("Runtime", rt);
  exports.Set("Stream", st);
  exports.Set("Tensor", te);
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("doctor", Napi::Function::New(env, Doctor));
  exports.Set("mapFile", Napi::Function::New(env, MapFile));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("binary", Napi::Function::New(env, Binary));
  exports.Set("siluMul", Napi::Function::New(env, SiluMul));
  exports.Set("moeCombine", Napi::Function::New(env, MoeCombine));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("softmax", Napi::Function::New(env, Softmax));
  exports.Set("embedding", Napi::Function::New(env, Embedding));
  exports.Set("sample", Napi::Function::New(env, Sample));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("probe", Napi::Function::New(env, Probe));
  exports.Set("emuSelftest", Napi::Function::New(env, EmuSelftest));
  exports.Set("packedBytes", Napi::Function::New(env, PackedBytes));
  exports.Set("quantize", Napi::Function::New(env, Quantize));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize));
  exports.Set("qpack", Napi::Function::New(env, QPack));
  exports.Set("qunpack", Napi::Function::New(env, QUnpack));
  exports.Set("ggufImport", Napi::Function::New(env, GgufImport));
  exports.Set("qmatmul", Napi::Function::New(env, QMatmul));
  exports.Set("fuseGateUp", Napi::Function::New(env, FuseGateUp));
  exports.Set("qmatmulGrouped", Napi::Function::New(env, QMatmulGrouped));
  exports.Set("kvCacheSizes", Napi::Function::New(env, KvCacheSizes));
  exports.Set("planAttention", Napi::Function::New(env, PlanAttention));
  exports.Set("kvAppend", Napi::Function::New(env, KvAppend));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("attentionMerge", Napi::Function::New(env, AttentionMerge));
  exports.Set("kvCopyBlocks", Napi::Function::New(env, KvCopyBlocks));
  exports.Set("kvSwap", Napi::Function::New(env, KvSwap));
  exports.Set("kvBlockHostBytes", Napi::Function::New(env, KvBlockHostBytes));
  return exports;
}

}  // namespace

NODE_API_MODULE(tachyon, Init)
