// One-pass CPU kernels for gradtx.fused_step.
//
// Each kernel is one XLA custom call that updates a group of leaves in
// place: it reads p, g and the moments once and writes p and the moments
// once (28 bytes per float32 parameter for Adam, 20 for SGD with momentum),
// where XLA:CPU emits three loops per leaf and moves 40. The arithmetic is
// the plain path's equations, operation by operation, in float32, with fused
// multiply-adds where XLA:CPU usually contracts them (see Madd below); the
// build passes -ffp-contract=off so that no other contraction happens. That
// is not XLA's code, which changes with the instruction set it targets, the
// chain and the jax version: what gradtx promises is a bound on the distance
// to the plain step and to the float64 step (docs/fused.md, "Same numbers";
// tests/test_fused.py), not the same bits.
// Params and gradients are float32; each kind of moment (Adam's first and
// second, the momentum) is kept in float32 or in bfloat16, widened on load
// and rounded on store as XLA converts (see Bf16 below).
//
// The per-step scalars (bias corrections, learning rate, decay, clipping
// factors) are computed by gradtx in JAX, exactly as the plain path computes
// them, and arrive in one small float32 buffer (one row per batch element
// under jax.vmap). Which leaves are decayed is a static attribute, and so is
// where each leaf's moments start when they live in flat arrays. Every
// result is aliased to its input (XLA copies an input first when it cannot
// be overwritten), so the loops run in place. The work is cut into chunks
// of at most kChunk elements, which the calling thread and the threads of
// XLA's intra-op pool take one at a time.
//
// Built on first use by gradtx/fused/_build.py with the system C++
// compiler, against the XLA FFI headers that jaxlib ships.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
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

// Positions in the scalars buffer (gradtx/fused/_step.py writes them).
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
// multiply-add wherever the target it compiles for has the instruction
// (with XLA_FLAGS=--xla_cpu_max_isa=AVX it has none), and LLVM usually
// picks the left product of `a * b + c * d`. Madd(a, b, c) = a * b + c
// rounds once with an FMA unit, twice without; either way it is within the
// bound. The rest is compiled with -ffp-contract=off, so no other
// contraction happens.
// The plain step (scale_by_adam) multiplies by the reciprocals of the bias
// corrections, with constants folded into them (`m * ((1 / c') * b1)` for
// Nesterov), so that XLA's simplifier has no division to rewrite; the kernels
// take the same reciprocals and factors as scalars.

#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
inline float Madd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float Madd(float a, float b, float c) { return a * b + c; }
#endif

// A moment kept in bfloat16: the upper half of a float32. Widening is exact;
// narrowing rounds to nearest, ties to even, and turns every NaN into the
// quiet NaN 0x7fc0 with its sign, which is what XLA:CPU's convert does
// (denormals are kept, not flushed).
struct Bf16 {
  uint16_t bits;
};

inline float Load(float x) { return x; }
inline float Load(Bf16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void Store(float& to, float x) { to = x; }
inline void Store(Bf16& to, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  to.bits = static_cast<uint16_t>(std::isnan(x) ? nan : rounded);
}

// A moment's update b * old + omb * x (omb = 1 - b), rounded as XLA:CPU
// rounds it. For a float32 moment LLVM contracts the left product, b * old.
// For a moment loaded from bfloat16 (through a convert) it mostly contracts
// the right one, omb * x, unless XLA has dropped the factor omb because it is
// 1 (SGD without dampening), which leaves b * old the only product. Not
// always: with clipping or coupled decay in the chain the plain step's two
// loops may each contract differently (they compute the moment twice), and
// the stored bfloat16 moment may then be one bfloat16 place from the plain
// step's (the bound allows it; tests/test_fused.py).
template <typename T>
inline float Ema(float b, float old, float omb, float x) {
  if (std::is_same_v<T, Bf16> && omb != 1.0f) return Madd(omb, x, b * old);
  return Madd(b, old, omb * x);
}

struct AdamConstants {
  float rescale, ratio, coupled, b1, omb1, b2, omb2, inv_c1, nesterov_m,
      nesterov_g, inv_c2, eps_root, eps, decoupled, step;
};

template <bool kClip, bool kCouple, bool kDecouple, bool kNesterov, typename M,
          typename V>
void AdamLoop(const AdamConstants& c, int64_t n, float* __restrict p,
              const float* __restrict g_in, M* __restrict m_io,
              V* __restrict v_io) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = p[i];
    float g = g_in[i];
    if (kClip) g = g * c.rescale * c.ratio;  // clip_by_global_norm
    if (kCouple) g = Madd(c.coupled, w, g);  // add_decayed_weights (L2)
    const float m = Ema<M>(c.b1, Load(m_io[i]), c.omb1, g);
    const float v = Ema<V>(c.b2, Load(v_io[i]), c.omb2, g * g);
    const float m_hat =
        kNesterov ? Madd(m, c.nesterov_m, g * c.nesterov_g) : m * c.inv_c1;
    // v_hat = v / c2 is rewritten as v * (1 / c2), then contracted with
    // the + eps_root that follows it.
    float u = m_hat / (std::sqrt(Madd(v, c.inv_c2, c.eps_root)) + c.eps);
    if (kDecouple) u = Madd(c.decoupled, w, u);  // add_decayed_weights (AdamW)
    p[i] = Madd(u, c.step, w);  // scale_by_learning_rate, apply_updates
    Store(m_io[i], m);
    Store(v_io[i], v);
  }
}

struct SgdConstants {
  float rescale, ratio, coupled, momentum, omd, step;
};

template <bool kClip, bool kCouple, bool kMomentum, bool kNesterov, typename V>
void SgdLoop(const SgdConstants& c, int64_t n, float* __restrict p,
             const float* __restrict g_in, V* __restrict v_io) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = p[i];
    float g = g_in[i];
    if (kClip) g = g * c.rescale * c.ratio;
    if (kCouple) g = Madd(c.coupled, w, g);
    float u = g;
    if (kMomentum) {
      const float v = Ema<V>(c.momentum, Load(v_io[i]), c.omd, g);
      Store(v_io[i], v);
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

template <typename T>
struct Type {
  using type = T;
};

// Call f(Type<Bf16>{}) or f(Type<float>{}): how a moment is stored.
template <typename F>
void DispatchStorage(bool bf16, F&& f) {
  if (bf16) f(Type<Bf16>{});
  else f(Type<float>{});
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

// The data of argument `index`, checked against `size` elements (any count
// if negative) and against its dtype: float32, or with `bf16` given (a
// moment) float32 or bfloat16, which *bf16 then tells.
ffi::ErrorOr<void*> AnyArg(const ffi::RemainingArgs& args, int64_t index,
                           int64_t size, const char* what,
                           bool* bf16 = nullptr) {
  auto buffer = args.get<ffi::AnyBuffer>(index);
  if (!buffer) return ffi::Unexpected(Invalid(std::string("bad ") + what));
  const ffi::DataType type = buffer->element_type();
  if (bf16 != nullptr && type == ffi::DataType::BF16) {
    *bf16 = true;
  } else if (type == ffi::DataType::F32) {
    if (bf16 != nullptr) *bf16 = false;
  } else {
    return ffi::Unexpected(Invalid(
        std::string(what) +
        (bf16 != nullptr ? " must be float32 or bfloat16" : " must be float32")));
  }
  if (size >= 0 && static_cast<int64_t>(buffer->element_count()) != size) {
    return ffi::Unexpected(
        Invalid(std::string(what) + " does not match its parameter"));
  }
  return buffer->untyped_data();
}

// The float32 data of argument `index`, checked against `size` elements.
ffi::ErrorOr<float*> InArg(const ffi::RemainingArgs& args, int64_t index,
                           int64_t size, const char* what) {
  auto data = AnyArg(args, index, size, what);
  if (!data.has_value()) return ffi::Unexpected(data.error());
  return static_cast<float*>(*data);
}

// Whether result `index` is the buffer of its input.
ffi::Error InPlace(const ffi::RemainingRets& rets, int64_t index,
                   const void* input, const char* what) {
  auto buffer = rets.get<ffi::AnyBuffer>(index);
  if (!buffer || (*buffer)->untyped_data() != input) {
    return Invalid(std::string(what) + " is not updated in place");
  }
  return ffi::Error::Success();
}

#define GRADTX_ASSIGN(lhs, expr)                      \
  auto lhs##_or = (expr);                             \
  if (!lhs##_or.has_value()) return lhs##_or.error(); \
  auto* lhs = *lhs##_or;

#define GRADTX_CHECK(expr)                         \
  if (auto error = (expr); !error.success()) {     \
    return error;                                  \
  }

// One leaf's buffers: p and g, and where its moments start: at element
// `moment_start` of moments[j] (their own buffers, or the flat moment
// buffers shared by all leaves). Under jax.vmap batch row r of a leaf's
// moments starts `moment_row` elements after row 0.
struct Leaf {
  float* p;
  float* g;
  void* moments[2];
  int64_t size, moment_start, moment_row, flags;
};

// Two layouts, both with every result aliased to its input:
//
// - per-leaf moments (`offsets` empty): arguments p, g, m1 .. mk for each
//   leaf; results p, m1 .. mk for each leaf.
// - flat moments (`offsets[i]` = where leaf i starts in them): arguments
//   M1 .. Mk (one buffer each, shared by all leaves), then p, g for each
//   leaf; results M1 .. Mk, then p for each leaf.
//
// bf16[j] says whether moment j is kept in bfloat16 (every leaf's alike).
ffi::Error DecodeLeaves(const ffi::RemainingArgs& args,
                        const ffi::RemainingRets& rets, int64_t n_moments,
                        ffi::Span<const int64_t> flags,
                        ffi::Span<const int64_t> offsets, int64_t rows,
                        std::vector<Leaf>& leaves, bool bf16[2]) {
  static const char* kNames[2] = {"first moment", "second moment"};
  const int64_t n_leaves = static_cast<int64_t>(flags.size());
  const bool flat = offsets.size() != 0;
  const int64_t n_in = flat ? 2 : 2 + n_moments;
  const int64_t n_out = flat ? 1 : 1 + n_moments;
  const int64_t in0 = flat ? n_moments : 0, out0 = flat ? n_moments : 0;
  if (static_cast<int64_t>(args.size()) != in0 + n_in * n_leaves ||
      static_cast<int64_t>(rets.size()) != out0 + n_out * n_leaves ||
      (flat && static_cast<int64_t>(offsets.size()) != n_leaves)) {
    return Invalid("kernel called with the wrong number of buffers");
  }
  void* flat_moments[2] = {nullptr, nullptr};
  int64_t flat_size = 0;
  if (flat) {
    for (int64_t j = 0; j < n_moments; ++j) {
      auto buffer = args.get<ffi::AnyBuffer>(j);
      if (!buffer) return Invalid("bad flat moments");
      if (j == 0) flat_size = static_cast<int64_t>(buffer->element_count());
      GRADTX_ASSIGN(m, AnyArg(args, j, flat_size, kNames[j], &bf16[j]));
      GRADTX_CHECK(InPlace(rets, j, m, kNames[j]));
      flat_moments[j] = m;
    }
    if (flat_size % rows != 0) return Invalid("flat moments split into rows");
  }
  leaves.resize(n_leaves);
  for (int64_t k = 0; k < n_leaves; ++k) {
    const int64_t a = in0 + n_in * k, r = out0 + n_out * k;
    auto p_buffer = args.get<ffi::AnyBuffer>(a);
    if (!p_buffer) return Invalid("bad p");
    const int64_t size = static_cast<int64_t>(p_buffer->element_count());
    if (size % rows != 0) return Invalid("a leaf does not split into rows");
    GRADTX_ASSIGN(p, InArg(args, a, size, "p"));
    GRADTX_ASSIGN(g, InArg(args, a + 1, size, "g"));
    GRADTX_CHECK(InPlace(rets, r, p, "p"));
    Leaf leaf{p, g, {nullptr, nullptr}, size, 0, size / rows, flags[k]};
    if (flat && n_moments > 0) {
      if (offsets[k] < 0 || offsets[k] + size / rows > flat_size / rows) {
        return Invalid("a leaf lies outside the flat moments");
      }
      leaf.moments[0] = flat_moments[0];
      leaf.moments[1] = flat_moments[1];
      leaf.moment_start = offsets[k];
      leaf.moment_row = flat_size / rows;
    }
    for (int64_t j = 0; j < n_moments && !flat; ++j) {
      bool leaf_bf16 = false;
      GRADTX_ASSIGN(m, AnyArg(args, a + 2 + j, size, kNames[j], &leaf_bf16));
      GRADTX_CHECK(InPlace(rets, r + 1 + j, m, kNames[j]));
      if (k == 0) bf16[j] = leaf_bf16;
      if (leaf_bf16 != bf16[j]) {
        return Invalid(std::string(kNames[j]) + "s of one dtype only");
      }
      leaf.moments[j] = m;
    }
    leaves[k] = leaf;
  }
  return ffi::Error::Success();
}

// Run run(leaf, row, offset into p and g, count, offset into the moments)
// over every chunk of every leaf, on the calling thread and XLA's pool.
template <typename Run>
void ForEachChunk(ffi::ThreadPool& pool, const std::vector<Leaf>& leaves,
                  int64_t rows, const Run& run) {
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (const Leaf& leaf : leaves) {
    sizes.push_back(leaf.size);
    total += leaf.size;
  }
  auto body = [&](const Span& span) {
    const Leaf& L = leaves[span.leaf];
    const int64_t row_size = L.size / rows;
    const int64_t mb = L.moment_start + span.row * L.moment_row +
                       (span.begin - span.row * row_size);
    run(L, span.row, span.begin, span.end - span.begin, mb);
  };
  ParallelFor(pool, MakeSpans(sizes, rows), total, body);
}

// ---------------------------------------------------------------------------
// Handlers.

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    ffi::Span<const int64_t> flags,
                    ffi::Span<const int64_t> offsets, bool clip,
                    bool nesterov) {
  auto rows_or = BatchRows(scalars, kAdamScalars);
  if (!rows_or.has_value()) return rows_or.error();
  const int64_t rows = *rows_or;
  std::vector<AdamConstants> constants(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scalars.typed_data() + r * kAdamScalars;
    constants[r] = {s[kAdamRescale],    s[kAdamRatio],      s[kAdamCoupled],
                    s[kAdamB1],         s[kAdamOneMinusB1], s[kAdamB2],
                    s[kAdamOneMinusB2], s[kAdamInvC1],      s[kAdamNesterovM],
                    s[kAdamNesterovG],  s[kAdamInvC2],      s[kAdamEpsRoot],
                    s[kAdamEps],        s[kAdamDecoupled],  s[kAdamStep]};
  }
  std::vector<Leaf> leaves;
  bool bf16[2] = {false, false};
  GRADTX_CHECK(DecodeLeaves(args, rets, 2, flags, offsets, rows, leaves, bf16));
  ForEachChunk(pool, leaves, rows, [&](const Leaf& L, int64_t row, int64_t b,
                                       int64_t n, int64_t mb) {
    const AdamConstants& c = constants[row];
    DispatchStorage(bf16[0], [&](auto m_type) {
      DispatchStorage(bf16[1], [&](auto v_type) {
        using M = typename decltype(m_type)::type;
        using V = typename decltype(v_type)::type;
        auto run = [&](auto k_clip, auto k_couple, auto k_decouple,
                       auto k_nesterov) {
          AdamLoop<decltype(k_clip)::value, decltype(k_couple)::value,
                   decltype(k_decouple)::value, decltype(k_nesterov)::value>(
              c, n, L.p + b, L.g + b, static_cast<M*>(L.moments[0]) + mb,
              static_cast<V*>(L.moments[1]) + mb);
        };
        Dispatch4(clip, L.flags & kCoupledDecay, L.flags & kDecoupledDecay,
                  nesterov, run);
      });
    });
  });
  return ffi::Error::Success();
}

ffi::Error SgdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                   ffi::RemainingArgs args, ffi::RemainingRets rets,
                   ffi::Span<const int64_t> flags,
                   ffi::Span<const int64_t> offsets, bool clip, bool momentum,
                   bool nesterov) {
  auto rows_or = BatchRows(scalars, kSgdScalars);
  if (!rows_or.has_value()) return rows_or.error();
  const int64_t rows = *rows_or;
  std::vector<SgdConstants> constants(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scalars.typed_data() + r * kSgdScalars;
    constants[r] = {s[kSgdRescale],  s[kSgdRatio],
                    s[kSgdCoupled],  s[kSgdMomentum],
                    s[kSgdOneMinusDampening], s[kSgdStep]};
  }
  std::vector<Leaf> leaves;
  bool bf16[2] = {false, false};
  GRADTX_CHECK(DecodeLeaves(args, rets, momentum ? 1 : 0, flags, offsets, rows,
                            leaves, bf16));
  ForEachChunk(pool, leaves, rows, [&](const Leaf& L, int64_t row, int64_t b,
                                       int64_t n, int64_t mb) {
    const SgdConstants& c = constants[row];
    DispatchStorage(momentum && bf16[0], [&](auto v_type) {
      using V = typename decltype(v_type)::type;
      V* v = momentum ? static_cast<V*>(L.moments[0]) + mb : nullptr;
      auto run = [&](auto k_clip, auto k_couple, auto k_momentum,
                     auto k_nesterov) {
        SgdLoop<decltype(k_clip)::value, decltype(k_couple)::value,
                decltype(k_momentum)::value, decltype(k_nesterov)::value>(
            c, n, L.p + b, L.g + b, v);
      };
      Dispatch4(clip, L.flags & kCoupledDecay, momentum, nesterov, run);
    });
  });
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
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<bool>("clip")
                                  .Attr<bool>("nesterov"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxFusedSgd, SgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("flags")
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<bool>("clip")
                                  .Attr<bool>("momentum")
                                  .Attr<bool>("nesterov"));
