// One-pass CPU kernels for gradtx.fused_step.
//
// Each kernel is one XLA custom call that updates a group of leaves in
// place: it reads p, g and the moments once and writes p and the moments
// once (28 bytes per float32 parameter for Adam, 20 for SGD with momentum),
// where XLA:CPU emits three loops per leaf and moves 40. The arithmetic is
// the plain path's, operation by operation and in the same order, in
// float32 with no contraction into fused multiply-adds (the build passes
// -ffp-contract=off), so the results are bit-identical to `tx.update`
// followed by `apply_updates`.
//
// The per-step scalars (bias corrections, learning rate, decay, clipping
// factors) are computed by gradtx in JAX, exactly as the plain path computes
// them, and arrive in one small float32 buffer. Which leaves are decayed is a
// static attribute. Every result is aliased to its input (XLA copies an
// input first when it cannot be overwritten), so the loops run in place.
// The work is cut into chunks of at most kChunk elements, which the calling
// thread and the threads of XLA's intra-op pool take one at a time.
//
// Built on first use by gradtx/fused.py with the system C++ compiler,
// against the XLA FFI headers that jaxlib ships.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 15;        // elements per task
constexpr int64_t kSerialBelow = 1 << 16;  // smaller totals run on one thread

// Bits of the per-leaf flags attribute.
constexpr int64_t kCoupledDecay = 1;    // g += coupled * p before the scaling
constexpr int64_t kDecoupledDecay = 2;  // u += decoupled * p after it

// Positions in the scalars buffer (gradtx/fused.py writes them).
enum AdamScalar {
  kAdamRescale, kAdamRatio, kAdamCoupled, kAdamB1, kAdamOneMinusB1, kAdamB2,
  kAdamOneMinusB2, kAdamInvC1, kAdamNesterovM, kAdamNesterovG, kAdamInvC2,
  kAdamEpsRoot, kAdamEps, kAdamDecoupled, kAdamStep, kAdamScalars
};
enum SgdScalar {
  kSgdRescale, kSgdRatio, kSgdCoupled, kSgdMomentum, kSgdOneMinusDampening,
  kSgdStep, kSgdScalars
};

// ---------------------------------------------------------------------------
// The equations, one element at a time. `step` is -learning_rate.
//
// XLA:CPU lets LLVM contract a product that feeds a sum into one fused
// multiply-add wherever the target has the instruction, and LLVM picks the
// left product of `a * b + c * d`. Madd(a, b, c) = a * b + c rounds as XLA
// does for the same expression: once, with an FMA unit, twice without. The
// rest is compiled with -ffp-contract=off, so no other contraction happens.
// XLA's algebraic simplifier also turns a division by a per-step scalar into
// a multiplication by its reciprocal and folds constants into it
// (`b1 * m / c` becomes `m * (b1 * (1 / c))`); the kernels take the
// reciprocals and folded factors, computed the same way, as scalars.

#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
inline float Madd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float Madd(float a, float b, float c) { return a * b + c; }
#endif

struct AdamConstants {
  float rescale, ratio, coupled, b1, omb1, b2, omb2, inv_c1, nesterov_m,
      nesterov_g, inv_c2, eps_root, eps, decoupled, step;
};

template <bool kClip, bool kCouple, bool kDecouple, bool kNesterov>
void AdamLoop(const AdamConstants& c, int64_t n, float* __restrict p,
              const float* __restrict g_in, float* __restrict m_io,
              float* __restrict v_io) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = p[i];
    float g = g_in[i];
    if (kClip) g = g * c.rescale * c.ratio;  // clip_by_global_norm
    if (kCouple) g = Madd(c.coupled, w, g);  // add_decayed_weights (L2)
    const float m = Madd(c.b1, m_io[i], c.omb1 * g);
    const float v = Madd(c.b2, v_io[i], c.omb2 * (g * g));
    const float m_hat =
        kNesterov ? Madd(m, c.nesterov_m, g * c.nesterov_g) : m * c.inv_c1;
    // v_hat = v / c2 is rewritten as v * (1 / c2), then contracted with
    // the + eps_root that follows it.
    float u = m_hat / (std::sqrt(Madd(v, c.inv_c2, c.eps_root)) + c.eps);
    if (kDecouple) u = Madd(c.decoupled, w, u);  // add_decayed_weights (AdamW)
    p[i] = Madd(u, c.step, w);  // scale_by_learning_rate, apply_updates
    m_io[i] = m;
    v_io[i] = v;
  }
}

struct SgdConstants {
  float rescale, ratio, coupled, momentum, omd, step;
};

template <bool kClip, bool kCouple, bool kMomentum, bool kNesterov>
void SgdLoop(const SgdConstants& c, int64_t n, float* __restrict p,
             const float* __restrict g_in, float* __restrict v_io) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = p[i];
    float g = g_in[i];
    if (kClip) g = g * c.rescale * c.ratio;
    if (kCouple) g = Madd(c.coupled, w, g);
    float u = g;
    if (kMomentum) {
      const float v = Madd(c.momentum, v_io[i], c.omd * g);
      v_io[i] = v;
      u = kNesterov ? Madd(c.momentum, v, g) : v;
    }
    p[i] = Madd(u, c.step, w);
  }
}

// Call f(std::bool_constant<a>, ..., std::bool_constant<d>) for runtime bools.
template <typename F>
void Dispatch4(bool a, bool b, bool c, bool d, F&& f) {
  auto with_d = [&](auto ka, auto kb, auto kc) {
    if (d) f(ka, kb, kc, std::true_type{});
    else f(ka, kb, kc, std::false_type{});
  };
  auto with_c = [&](auto ka, auto kb) {
    if (c) with_d(ka, kb, std::true_type{});
    else with_d(ka, kb, std::false_type{});
  };
  auto with_b = [&](auto ka) {
    if (b) with_c(ka, std::true_type{});
    else with_c(ka, std::false_type{});
  };
  if (a) with_b(std::true_type{});
  else with_b(std::false_type{});
}

// ---------------------------------------------------------------------------
// Work split.

// A run of elements [begin, end) of one leaf, all in one batch row (under
// jax.vmap, row r of every leaf uses row r of the scalars).
struct Span {
  int64_t leaf, row, begin, end;
};

std::vector<Span> MakeSpans(const std::vector<int64_t>& sizes, int64_t rows) {
  std::vector<Span> spans;
  for (int64_t leaf = 0; leaf < static_cast<int64_t>(sizes.size()); ++leaf) {
    const int64_t row_size = sizes[leaf] / rows;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t row_end = (row + 1) * row_size;
      for (int64_t begin = row * row_size; begin < row_end; begin += kChunk) {
        spans.push_back({leaf, row, begin, std::min(row_end, begin + kChunk)});
      }
    }
  }
  return spans;
}

// The number of batch rows: the scalars hold `per_row` values per row and
// every leaf splits into that many equal rows.
ffi::ErrorOr<int64_t> BatchRows(const ffi::Buffer<ffi::F32>& scalars,
                                int64_t per_row) {
  const int64_t count = static_cast<int64_t>(scalars.element_count());
  if (count == 0 || count % per_row != 0) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "gradtx fused step: wrong number of scalars"));
  }
  return count / per_row;
}

// Shared by the caller and the pool tasks. A task may start after the caller
// has finished every chunk and returned, so it holds its own reference.
struct Work {
  std::vector<Span> spans;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
};

// Run body(span) for every span on the calling thread and on up to
// num_threads - 1 threads of XLA's pool; return when all are done. The
// caller takes chunks too, so the call finishes even if no pool thread is
// free: it then waits only for chunks that a pool thread has started.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, std::vector<Span> spans, int64_t total,
                 const Body& body) {
  const int64_t threads = total < kSerialBelow ? 1 : pool.num_threads();
  if (threads <= 1 || spans.size() <= 1) {
    for (const Span& span : spans) body(span);
    return;
  }
  auto work = std::make_shared<Work>();
  work->spans = std::move(spans);
  const int64_t n = static_cast<int64_t>(work->spans.size());
  const Body* shared_body = &body;
  auto drain = [work, n, shared_body]() {
    for (;;) {
      const int64_t i = work->next.fetch_add(1);
      if (i >= n) return;  // a late task never touches `body`
      (*shared_body)(work->spans[i]);
      if (work->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(work->mutex);
        work->finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(threads, n) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([drain] { drain(); });
  drain();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->finished.wait(lock, [&] { return work->done.load() == n; });
}

// ---------------------------------------------------------------------------
// Argument decoding.

ffi::Error Invalid(const std::string& message) {
  return ffi::Error::InvalidArgument("gradtx fused step: " + message);
}

// The float32 data of argument `index`, checked against `size` elements.
ffi::ErrorOr<float*> InArg(const ffi::RemainingArgs& args, int64_t index,
                           int64_t size, const char* what) {
  auto buffer = args.get<ffi::AnyBuffer>(index);
  if (!buffer) return ffi::Unexpected(Invalid(std::string("bad ") + what));
  if (buffer->element_type() != ffi::DataType::F32) {
    return ffi::Unexpected(Invalid(std::string(what) + " must be float32"));
  }
  if (size >= 0 && static_cast<int64_t>(buffer->element_count()) != size) {
    return ffi::Unexpected(
        Invalid(std::string(what) + " does not match its parameter"));
  }
  return static_cast<float*>(buffer->untyped_data());
}

// The data of result `index`, which must be the buffer of its input.
ffi::ErrorOr<float*> InPlace(const ffi::RemainingRets& rets, int64_t index,
                             float* input, const char* what) {
  auto buffer = rets.get<ffi::AnyBuffer>(index);
  if (!buffer || (*buffer)->untyped_data() != input) {
    return ffi::Unexpected(
        Invalid(std::string(what) + " is not updated in place"));
  }
  return input;
}

#define GRADTX_ASSIGN(lhs, expr)                   \
  auto lhs##_or = (expr);                          \
  if (!lhs##_or.has_value()) return lhs##_or.error(); \
  float* lhs = *lhs##_or;

// ---------------------------------------------------------------------------
// Handlers.

// Arguments: scalars, then p, g, m, v for each leaf. Results: p, m, v for
// each leaf, each aliased to its input.
ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    ffi::Span<const int64_t> flags, bool clip, bool nesterov) {
  const int64_t n_leaves = static_cast<int64_t>(flags.size());
  auto rows_or = BatchRows(scalars, kAdamScalars);
  if (!rows_or.has_value()) return rows_or.error();
  const int64_t rows = *rows_or;
  if (static_cast<int64_t>(args.size()) != 4 * n_leaves ||
      static_cast<int64_t>(rets.size()) != 3 * n_leaves) {
    return Invalid("adam kernel called with the wrong number of buffers");
  }
  std::vector<AdamConstants> constants(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scalars.typed_data() + r * kAdamScalars;
    constants[r] = {s[kAdamRescale],    s[kAdamRatio],      s[kAdamCoupled],
                    s[kAdamB1],         s[kAdamOneMinusB1], s[kAdamB2],
                    s[kAdamOneMinusB2], s[kAdamInvC1],      s[kAdamNesterovM],
                    s[kAdamNesterovG],  s[kAdamInvC2],      s[kAdamEpsRoot],
                    s[kAdamEps],        s[kAdamDecoupled],  s[kAdamStep]};
  }
  struct Leaf {
    float *p, *g, *m, *v;
    int64_t flags;
  };
  std::vector<Leaf> leaves(n_leaves);
  std::vector<int64_t> sizes(n_leaves);
  int64_t total = 0;
  for (int64_t k = 0; k < n_leaves; ++k) {
    auto p_buffer = args.get<ffi::AnyBuffer>(4 * k);
    if (!p_buffer) return Invalid("bad p");
    const int64_t size = static_cast<int64_t>(p_buffer->element_count());
    if (size % rows != 0) return Invalid("a leaf does not split into batch rows");
    GRADTX_ASSIGN(p, InArg(args, 4 * k, size, "p"));
    GRADTX_ASSIGN(g, InArg(args, 4 * k + 1, size, "g"));
    GRADTX_ASSIGN(m, InArg(args, 4 * k + 2, size, "mu"));
    GRADTX_ASSIGN(v, InArg(args, 4 * k + 3, size, "nu"));
    GRADTX_ASSIGN(p_out, InPlace(rets, 3 * k, p, "p"));
    GRADTX_ASSIGN(m_out, InPlace(rets, 3 * k + 1, m, "mu"));
    GRADTX_ASSIGN(v_out, InPlace(rets, 3 * k + 2, v, "nu"));
    (void)p_out, (void)m_out, (void)v_out;
    leaves[k] = {p, g, m, v, flags[k]};
    sizes[k] = size;
    total += size;
  }
  auto body = [&](const Span& span) {
    const Leaf& L = leaves[span.leaf];
    const int64_t b = span.begin, n = span.end - span.begin;
    const AdamConstants& c = constants[span.row];
    auto run = [&](auto k_clip, auto k_couple, auto k_decouple, auto k_nesterov) {
      AdamLoop<decltype(k_clip)::value, decltype(k_couple)::value,
               decltype(k_decouple)::value, decltype(k_nesterov)::value>(
          c, n, L.p + b, L.g + b, L.m + b, L.v + b);
    };
    Dispatch4(clip, L.flags & kCoupledDecay, L.flags & kDecoupledDecay,
              nesterov, run);
  };
  ParallelFor(pool, MakeSpans(sizes, rows), total, body);
  return ffi::Error::Success();
}

// Arguments: scalars, then p, g (and v with momentum) for each leaf.
// Results: p (and v) for each leaf, each aliased to its input.
ffi::Error SgdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                   ffi::RemainingArgs args, ffi::RemainingRets rets,
                   ffi::Span<const int64_t> flags, bool clip, bool momentum,
                   bool nesterov) {
  const int64_t n_leaves = static_cast<int64_t>(flags.size());
  const int64_t n_in = momentum ? 3 : 2, n_out = momentum ? 2 : 1;
  auto rows_or = BatchRows(scalars, kSgdScalars);
  if (!rows_or.has_value()) return rows_or.error();
  const int64_t rows = *rows_or;
  if (static_cast<int64_t>(args.size()) != n_in * n_leaves ||
      static_cast<int64_t>(rets.size()) != n_out * n_leaves) {
    return Invalid("sgd kernel called with the wrong number of buffers");
  }
  std::vector<SgdConstants> constants(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scalars.typed_data() + r * kSgdScalars;
    constants[r] = {s[kSgdRescale],  s[kSgdRatio],
                    s[kSgdCoupled],  s[kSgdMomentum],
                    s[kSgdOneMinusDampening], s[kSgdStep]};
  }
  struct Leaf {
    float *p, *g, *v;
    int64_t flags;
  };
  std::vector<Leaf> leaves(n_leaves);
  std::vector<int64_t> sizes(n_leaves);
  int64_t total = 0;
  for (int64_t k = 0; k < n_leaves; ++k) {
    auto p_buffer = args.get<ffi::AnyBuffer>(n_in * k);
    if (!p_buffer) return Invalid("bad p");
    const int64_t size = static_cast<int64_t>(p_buffer->element_count());
    if (size % rows != 0) return Invalid("a leaf does not split into batch rows");
    GRADTX_ASSIGN(p, InArg(args, n_in * k, size, "p"));
    GRADTX_ASSIGN(g, InArg(args, n_in * k + 1, size, "g"));
    GRADTX_ASSIGN(p_out, InPlace(rets, n_out * k, p, "p"));
    (void)p_out;
    float* v = nullptr;
    if (momentum) {
      GRADTX_ASSIGN(velocity, InArg(args, n_in * k + 2, size, "velocity"));
      GRADTX_ASSIGN(v_out, InPlace(rets, n_out * k + 1, velocity, "velocity"));
      (void)v_out;
      v = velocity;
    }
    leaves[k] = {p, g, v, flags[k]};
    sizes[k] = size;
    total += size;
  }
  auto body = [&](const Span& span) {
    const Leaf& L = leaves[span.leaf];
    const int64_t b = span.begin, n = span.end - span.begin;
    float* v = L.v ? L.v + b : nullptr;
    const SgdConstants& c = constants[span.row];
    auto run = [&](auto k_clip, auto k_couple, auto k_momentum, auto k_nesterov) {
      SgdLoop<decltype(k_clip)::value, decltype(k_couple)::value,
              decltype(k_momentum)::value, decltype(k_nesterov)::value>(
          c, n, L.p + b, L.g + b, v);
    };
    Dispatch4(clip, L.flags & kCoupledDecay, momentum, nesterov, run);
  };
  ParallelFor(pool, MakeSpans(sizes, rows), total, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxFusedAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("flags")
                                  .Attr<bool>("clip")
                                  .Attr<bool>("nesterov"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxFusedSgd, SgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("flags")
                                  .Attr<bool>("clip")
                                  .Attr<bool>("momentum")
                                  .Attr<bool>("nesterov"));
