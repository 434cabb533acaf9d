// Fused blockwise attention for the CPU, called from JAX through XLA's FFI (lcx/native/__init__.py
// builds and registers it). Why it exists: XLA on CPU runs each tile product of the JAX blockwise
// kernel as a separate small batched matmul and every softmax step as a pass through memory, so
// attention ran at ~30% of this CPU's matmul peak. Here a tile's scores, bias, mask, softmax and
// both products stay in cache, and the products run on a register-tiled micro-kernel.
//
// The same algorithm as lcx/blockwise.py: an online softmax over key tiles, causal tiles above the
// diagonal never visited (and, with packed documents, tiles whose segments do not meet; with a
// local window or chunk, tiles farther back than its span), memory
// linear in length, and a backward pass that recomputes each tile's probabilities from the saved
// log-normalizer. One work item is one (batch row, head): the items share nothing, so they run on
// XLA's intra-op thread pool without locks.
//
// Layout: q, k, v, o and their gradients (B, L, H, K) float32 as the model holds them; the
// log-normalizer (B, H, Q). Positions and segment ids (B, L) int32; slopes (H,) float32. The one
// bias computed in the kernel is ALiBi's, -slope_h * |q_pos - k_pos|.
//
// Vectors are GCC vector extensions of 16 floats: one AVX-512 register, two AVX2 registers, four
// NEON registers, whatever -march=native gives.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
// Buffer types by element type and rank (aliases: the handler macros split on commas).
using F32_1 = ffi::Buffer<ffi::F32, 1>;
using F32_3 = ffi::Buffer<ffi::F32, 3>;
using F32_4 = ffi::Buffer<ffi::F32, 4>;
using S32_2 = ffi::Buffer<ffi::S32, 2>;

namespace {

constexpr int W = 16;  // floats per vector
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kMaxTile = 512;  // longest key tile, padded (lcx/native/__init__.py: MAX_BLOCK)

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }
inline int64_t floor_div(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}

inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// e^x for x <= 88, exactly 0 below -87 (masked scores are -inf): 2^n e^r with |r| <= ln2 / 2 and
// a degree-6 Taylor polynomial for e^r (relative error ~2e-7).
inline vf vexp(vf x) {
  const vf lo = splat(-87.f);
  vi dead = x < lo;
  x = dead ? lo : x;
  vf n = x * 1.44269504f;
  n = (n + 12582912.f) - 12582912.f;  // round to nearest (|n| < 2^22)
  vf r = x - n * 0.693145752f - n * 1.42860677e-6f;
  vf p = splat(1.f / 720);
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return dead ? splat(0.f) : p * scale;
}

// C[R x 16V] (+)= sum_x A(r, x) B[x, 0:16V], with A(r, x) = a[r * ars + x * acs] (any layout:
// each element is broadcast) and B row-major. The accumulators stay in registers.
template <int R, int V>
inline void micro(int kc, const float* a, long ars, long acs, const float* b, long ldb, float* c,
                  long ldc, bool accumulate) {
  vf acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * W) : splat(0.f);
  for (int x = 0; x < kc; ++x) {
    vf bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = load(b + x * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      vf av = splat(a[r * ars + x * acs]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) store(c + r * ldc + v * W, acc[r][v]);
}

template <int V>
inline void rows(int m, int kc, const float* a, long ars, long acs, const float* b, long ldb,
                 float* c, long ldc, bool accumulate) {
  constexpr int R = V == 4 ? 6 : 8;
  int r = 0;
  for (; r + R <= m; r += R)
    micro<R, V>(kc, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc, accumulate);
  for (; r < m; ++r) micro<1, V>(kc, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc, accumulate);
}

// C (m x n) (+)= A (m x kc) B (kc x n); n a multiple of 16. Column panels outer, so a panel of B
// stays in L1 while the rows of A stream past it.
void gemm(int m, int n, int kc, const float* a, long ars, long acs, const float* b, long ldb,
          float* c, long ldc, bool accumulate) {
  int col = 0;
  for (; col + 4 * W <= n; col += 4 * W)
    rows<4>(m, kc, a, ars, acs, b + col, ldb, c + col, ldc, accumulate);
  for (; col + 2 * W <= n; col += 2 * W)
    rows<2>(m, kc, a, ars, acs, b + col, ldb, c + col, ldc, accumulate);
  for (; col < n; col += W) rows<1>(m, kc, a, ars, acs, b + col, ldb, c + col, ldc, accumulate);
}

// Runs body(item) for item in [0, n) on the calling thread and XLA's intra-op pool. A task that
// starts after every item is claimed returns at once, so the caller waits only for claimed items.
template <class F>
void parallel_for(ffi::ThreadPool& pool, int n, const F& body) {
  struct State {
    std::atomic<int> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body] {
    for (int item; (item = state->next.fetch_add(1)) < n;) {
      body(item);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// The static description of one call, and what every tile needs to know about masking and bias.
struct Geometry {
  int B, Q, S, H, K;  // batch, queries, keys, heads, head dim
  int G;              // key/value heads: each serves H / G query heads (grouped-query attention)
  int Kp;             // head dim padded to a multiple of 16
  int bq, bk, bkp;    // tile lengths (bkp: bk padded to a multiple of 16)
  bool causal;
  int64_t offset;  // causal: query q sees key k <= q + offset
  bool segments, bias;
  // A local layer (0: none): a query sees keys with p_q - p_k < window, or of its own chunk
  // (p // chunk equal), by position; span, the larger, bounds the index distance it reaches.
  int64_t window, chunk, span;

  bool local() const { return window || chunk; }

  int first_key_tile(int i) const {  // the first key tile query tile i visits (as blockwise's)
    if (!span) return 0;
    int64_t first = int64_t(i) * bq + offset - span + 1;
    return first <= 0 ? 0 : int(first / bk);
  }

  int key_tiles_seen(int i) const {  // key tiles query tile i visits, from the first
    int nk = (S + bk - 1) / bk;
    if (!causal) return nk;
    int64_t last_key = int64_t(std::min((i + 1) * bq, Q)) - 1 + offset;
    return int(std::clamp<int64_t>(last_key / bk + (last_key >= 0 ? 1 : 0), 0, nk));
  }
};

// One (batch row, head): its q, k, v (and dO) gathered from the (B, L, H, K) layout (k and v
// from (B, L, G, K), its group's head) into contiguous, zero-padded rows, q scaled by
// 1/sqrt(K), k and v also transposed for the products that contract over the head dim.
struct Head {
  const Geometry& g;
  int b, h, kv;  // kv: the key/value head of query head h
  const int32_t *q_pos, *k_pos, *q_seg, *k_seg;
  float slope;
  std::vector<float> q, k, kt, v, vt;

  Head(const Geometry& g, int b, int h, const int32_t* q_pos, const int32_t* k_pos,
       const int32_t* q_seg, const int32_t* k_seg, const float* slopes)
      : g(g), b(b), h(h), kv(h / (g.H / g.G)), q_pos(q_pos + int64_t(b) * g.Q),
        k_pos(k_pos + int64_t(b) * g.S),
        q_seg(q_seg + int64_t(b) * g.Q), k_seg(k_seg + int64_t(b) * g.S),
        slope(g.bias ? slopes[h] : 0.f) {}

  // x (B, L, heads, K) -> rows (L, Kp) of head `head`, times `scale`.
  void gather(const float* x, int len, int heads, int head, float scale,
              std::vector<float>& out) const {
    out.assign(size_t(len) * g.Kp, 0.f);
    for (int t = 0; t < len; ++t) {
      const float* src = x + ((int64_t(b) * len + t) * heads + head) * g.K;
      float* dst = out.data() + size_t(t) * g.Kp;
      for (int d = 0; d < g.K; ++d) dst[d] = src[d] * scale;
    }
  }

  // rows (len, Kp) -> transposed (Kp, transposed_cols()), for B operands over the head dim.
  std::vector<float> transpose(const std::vector<float>& x, int len) const {
    const int cols = transposed_cols();
    std::vector<float> out(size_t(g.Kp) * cols, 0.f);
    for (int t = 0; t < len; ++t)
      for (int d = 0; d < g.K; ++d) out[size_t(d) * cols + t] = x[size_t(t) * g.Kp + d];
    return out;
  }

  // Whole tiles of keys, plus one vector so that rows are not a multiple of 4 KiB apart (rows
  // that are share L1 sets: the score product ran at 147 instead of 185 GFLOP/s on one core).
  int transposed_cols() const { return round_up(g.S, g.bk) + (g.bkp - g.bk) + W; }

  // Whether some query of tile i may see some key of tile j once segments are counted: documents
  // are compared by range, so a tile pair from two different documents is skipped.
  bool segments_meet(int q0, int nq, int k0, int nk) const {
    if (!g.segments) return true;
    auto [qmin, qmax] = std::minmax_element(q_seg + q0, q_seg + q0 + nq);
    auto [kmin, kmax] = std::minmax_element(k_seg + k0, k_seg + k0 + nk);
    return *qmin <= *kmax && *kmin <= *qmax;
  }
};

// Tile (q0.., k0..) of one head: adds the bias to a row of its scores and sets what the query may
// not see to -inf, in one pass that also finds the row's max. Tiles wholly below the diagonal,
// with no padded key and no packed documents, need no mask.
struct Tile {
  const Head& head;
  int q0;
  bool full;
  alignas(64) float kpos[kMaxTile], kidx[kMaxTile], kchunk[kMaxTile];
  alignas(64) int32_t kseg[kMaxTile];

  Tile(const Head& head, int q0, int k0, int nk) : head(head), q0(q0) {
    const Geometry& g = head.g;
    full = nk == g.bkp && !g.segments && !g.local() &&
           (!g.causal || int64_t(k0 + nk - 1) <= q0 + g.offset);
    for (int c = 0; c < g.bkp; ++c) {  // padded keys: at index +inf, so no query sees them
      kpos[c] = c < nk ? float(head.k_pos[k0 + c]) : 0.f;
      kchunk[c] = c < nk && g.chunk ? float(floor_div(head.k_pos[k0 + c], g.chunk)) : 0.f;
      kidx[c] = c < nk ? float(k0 + c) : kInf;
      kseg[c] = c < nk && g.segments ? head.k_seg[k0 + c] : 0;
    }
  }

  template <bool kBias, bool kMask>
  float finish(float* row, int r) const {
    const Geometry& g = head.g;
    const vf qp = splat(float(head.q_pos[q0 + r])), m = splat(-head.slope);
    // The last key index this query sees, as a float (exact below 2^24 tokens).
    const vf last = splat(g.causal ? float(q0 + r + g.offset) : 3e38f);
    const vi qseg = vi{} + (g.segments ? head.q_seg[q0 + r] : 0);
    const vf window = splat(g.window ? float(g.window) : 3e38f);
    const vf qchunk = splat(g.chunk ? float(floor_div(head.q_pos[q0 + r], g.chunk)) : 0.f);
    vf mx = splat(-kInf);
    for (int c = 0; c < g.bkp; c += W) {
      vf x = load(row + c);
      if (kBias) {
        vf d = qp - load(kpos + c);
        x += m * (d < 0 ? -d : d);
      }
      if (kMask) {
        vi kc;
        std::memcpy(&kc, kseg + c, sizeof kc);
        vi seen = (load(kidx + c) <= last) & (kc == qseg);
        if (g.local()) seen &= (qp - load(kpos + c) < window) & (load(kchunk + c) == qchunk);
        x = seen ? x : splat(-kInf);
      }
      if (kBias || kMask) store(row + c, x);
      mx = mx > x ? mx : x;
    }
    return hmax(mx);
  }

  // The row's max, after its bias and mask.
  float finish(float* row, int r) const {
    if (head.g.bias) return full ? finish<true, false>(row, r) : finish<true, true>(row, r);
    return full ? finish<false, false>(row, r) : finish<false, true>(row, r);
  }
};

ffi::Error check_shapes(const Geometry& g) {
  if (g.bq < 1 || g.bk < 1 || g.bkp > kMaxTile)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lcx native attention: tile lengths must be in 1..512");
  if (g.G < 1 || g.H % g.G != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lcx native attention: key/value heads must divide the query heads");
  return ffi::Error::Success();
}

Geometry make_geometry(ffi::AnyBuffer::Dimensions qd, ffi::AnyBuffer::Dimensions kd, int64_t bq,
                       int64_t bk, int64_t causal, int64_t offset, int64_t segments,
                       int64_t bias, int64_t window, int64_t chunk) {
  Geometry g;
  g.B = int(qd[0]), g.Q = int(qd[1]), g.H = int(qd[2]), g.K = int(qd[3]), g.S = int(kd[1]);
  g.G = int(kd[2]);
  g.Kp = round_up(g.K, W);
  g.bq = int(std::min<int64_t>(bq, g.Q)), g.bk = int(std::min<int64_t>(bk, g.S));
  g.bkp = round_up(g.bk, W);
  g.causal = causal != 0, g.offset = offset, g.segments = segments != 0, g.bias = bias != 0;
  g.window = window, g.chunk = chunk, g.span = std::max(window, chunk);
  return g;
}

ffi::Error Forward(ffi::ThreadPool pool, F32_4 q, F32_4 k,
                   F32_4 v, S32_2 q_pos,
                   S32_2 k_pos, S32_2 q_seg,
                   S32_2 k_seg, F32_1 slopes,
                   ffi::Result<F32_4> o, ffi::Result<F32_3> lse,
                   int64_t block_q, int64_t block_k, int64_t causal, int64_t offset,
                   int64_t segments, int64_t bias, int64_t window, int64_t chunk) {
  const Geometry g = make_geometry(q.dimensions(), k.dimensions(), block_q, block_k, causal,
                                   offset, segments, bias, window, chunk);
  if (auto error = check_shapes(g); error.failure()) return error;
  float* out = o->typed_data();
  float* out_lse = lse->typed_data();
  const float scale = 1.f / std::sqrt(float(g.K));

  parallel_for(pool, g.B * g.H, [&](int item) {
    Head head(g, item / g.H, item % g.H, q_pos.typed_data(), k_pos.typed_data(),
              q_seg.typed_data(), k_seg.typed_data(), slopes.typed_data());
    head.gather(q.typed_data(), g.Q, g.H, head.h, scale, head.q);
    head.gather(k.typed_data(), g.S, g.G, head.kv, 1.f, head.k);
    head.gather(v.typed_data(), g.S, g.G, head.kv, 1.f, head.v);
    head.kt = head.transpose(head.k, g.S);
    const int kt_cols = head.transposed_cols();
    std::vector<float> s(size_t(g.bq) * g.bkp), acc(size_t(g.bq) * g.Kp), m(g.bq), l(g.bq);

    for (int q0 = 0; q0 < g.Q; q0 += g.bq) {
      const int nq = std::min(g.bq, g.Q - q0);
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int j = g.first_key_tile(q0 / g.bq), seen = g.key_tiles_seen(q0 / g.bq); j < seen;
           ++j) {
        const int k0 = j * g.bk, nk = std::min(g.bk, g.S - k0);
        if (!head.segments_meet(q0, nq, k0, nk)) continue;
        gemm(nq, g.bkp, g.K, head.q.data() + size_t(q0) * g.Kp, g.Kp, 1, head.kt.data() + k0,
             kt_cols, s.data(), g.bkp, false);
        const Tile tile(head, q0, k0, nk);
        for (int r = 0; r < nq; ++r) {  // online softmax, one row at a time
          float* row = s.data() + size_t(r) * g.bkp;
          const float m_new = std::max(m[r], tile.finish(row, r));
          if (m_new == -kInf) {  // nothing seen yet in this row: p is all zero
            std::fill(row, row + g.bkp, 0.f);
            continue;
          }
          vf sum = splat(0.f), shift = splat(m_new);
          for (int c = 0; c < g.bkp; c += W) {
            vf p = vexp(load(row + c) - shift);
            store(row + c, p);
            sum += p;
          }
          const float correction = m[r] == -kInf ? 0.f : std::exp(m[r] - m_new);
          l[r] = l[r] * correction + hsum(sum);
          m[r] = m_new;
          if (correction != 1.f) {
            float* a = acc.data() + size_t(r) * g.Kp;
            for (int d = 0; d < g.Kp; d += W) store(a + d, load(a + d) * correction);
          }
        }
        gemm(nq, g.Kp, nk, s.data(), g.bkp, 1, head.v.data() + size_t(k0) * g.Kp, g.Kp,
             acc.data(), g.Kp, true);
      }
      for (int r = 0; r < nq; ++r) {  // rows that saw no key give 0 and an infinite lse
        const int t = q0 + r;
        const float inv = l[r] > 0 ? 1.f / l[r] : 0.f;
        float* dst = out + ((int64_t(head.b) * g.Q + t) * g.H + head.h) * g.K;
        for (int d = 0; d < g.K; ++d) dst[d] = acc[size_t(r) * g.Kp + d] * inv;
        out_lse[(int64_t(head.b) * g.H + head.h) * g.Q + t] =
            l[r] > 0 ? m[r] + std::log(l[r]) : kInf;
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, F32_4 q, F32_4 k,
                    F32_4 v, F32_4 o,
                    F32_3 lse, F32_4 d_o,
                    S32_2 q_pos, S32_2 k_pos,
                    S32_2 q_seg, S32_2 k_seg,
                    F32_1 slopes, ffi::Result<F32_4> dq,
                    ffi::Result<F32_4> dk, ffi::Result<F32_4> dv,
                    int64_t block_q, int64_t block_k, int64_t causal, int64_t offset,
                    int64_t segments, int64_t bias, int64_t window, int64_t chunk) {
  const Geometry g = make_geometry(q.dimensions(), k.dimensions(), block_q, block_k, causal,
                                   offset, segments, bias, window, chunk);
  if (auto error = check_shapes(g); error.failure()) return error;
  const float scale = 1.f / std::sqrt(float(g.K));
  float *dq_out = dq->typed_data(), *dk_out = dk->typed_data(), *dv_out = dv->typed_data();

  parallel_for(pool, g.B * g.H, [&](int item) {
    Head head(g, item / g.H, item % g.H, q_pos.typed_data(), k_pos.typed_data(),
              q_seg.typed_data(), k_seg.typed_data(), slopes.typed_data());
    std::vector<float> o_rows, d_o_rows;
    head.gather(q.typed_data(), g.Q, g.H, head.h, scale, head.q);
    head.gather(k.typed_data(), g.S, g.G, head.kv, 1.f, head.k);
    head.gather(v.typed_data(), g.S, g.G, head.kv, 1.f, head.v);
    head.gather(o.typed_data(), g.Q, g.H, head.h, 1.f, o_rows);
    head.gather(d_o.typed_data(), g.Q, g.H, head.h, 1.f, d_o_rows);
    head.kt = head.transpose(head.k, g.S);
    head.vt = head.transpose(head.v, g.S);
    const int kt_cols = head.transposed_cols();
    const float* row_lse = lse.typed_data() + (int64_t(head.b) * g.H + head.h) * g.Q;
    std::vector<float> delta(g.Q);  // D_q = sum_d dO_qd O_qd, the softmax backward's row term
    for (int t = 0; t < g.Q; ++t) {
      float sum = 0.f;
      const float *a = d_o_rows.data() + size_t(t) * g.Kp, *b = o_rows.data() + size_t(t) * g.Kp;
      for (int d = 0; d < g.K; ++d) sum += a[d] * b[d];
      delta[t] = sum;
    }
    std::vector<float> dq_rows(size_t(g.Q) * g.Kp, 0.f), dk_tile(size_t(g.bk) * g.Kp),
        dv_tile(size_t(g.bk) * g.Kp), p(size_t(g.bq) * g.bkp), ds(size_t(g.bq) * g.bkp);

    for (int k0 = 0; k0 < g.S; k0 += g.bk) {
      const int nk = std::min(g.bk, g.S - k0), j = k0 / g.bk;
      std::fill(dk_tile.begin(), dk_tile.end(), 0.f);
      std::fill(dv_tile.begin(), dv_tile.end(), 0.f);
      for (int q0 = 0; q0 < g.Q; q0 += g.bq) {
        const int nq = std::min(g.bq, g.Q - q0);
        if (g.key_tiles_seen(q0 / g.bq) <= j || j < g.first_key_tile(q0 / g.bq) ||
            !head.segments_meet(q0, nq, k0, nk))
          continue;
        const float* q_tile = head.q.data() + size_t(q0) * g.Kp;
        const float* d_o_tile = d_o_rows.data() + size_t(q0) * g.Kp;
        gemm(nq, g.bkp, g.K, q_tile, g.Kp, 1, head.kt.data() + k0, kt_cols, p.data(), g.bkp,
             false);
        const Tile tile(head, q0, k0, nk);
        for (int r = 0; r < nq; ++r) {  // P = exp(S - lse), from the forward pass's lse
          float* row = p.data() + size_t(r) * g.bkp;
          if (!tile.full || g.bias) tile.finish(row, r);  // its max is not needed here
          vf shift = splat(row_lse[q0 + r]);
          for (int c = 0; c < g.bkp; c += W) store(row + c, vexp(load(row + c) - shift));
        }
        // dV_j += P^T dO_i;  dP = dO_i V_j^T
        gemm(nk, g.Kp, nq, p.data(), 1, g.bkp, d_o_tile, g.Kp, dv_tile.data(), g.Kp, true);
        gemm(nq, g.bkp, g.K, d_o_tile, g.Kp, 1, head.vt.data() + k0, kt_cols, ds.data(), g.bkp,
             false);
        for (int r = 0; r < nq; ++r) {  // dS = P (dP - D)
          float* dsr = ds.data() + size_t(r) * g.bkp;
          const float* pr = p.data() + size_t(r) * g.bkp;
          vf dr = splat(delta[q0 + r]);
          for (int c = 0; c < g.bkp; c += W) store(dsr + c, load(pr + c) * (load(dsr + c) - dr));
        }
        // dQ_i += dS K_j;  dK_j += dS^T Q_i
        gemm(nq, g.Kp, nk, ds.data(), g.bkp, 1, head.k.data() + size_t(k0) * g.Kp, g.Kp,
             dq_rows.data() + size_t(q0) * g.Kp, g.Kp, true);
        gemm(nk, g.Kp, nq, ds.data(), 1, g.bkp, q_tile, g.Kp, dk_tile.data(), g.Kp, true);
      }
      for (int c = 0; c < nk; ++c) {  // per query head: a group's are added up by the caller
        const int64_t at = ((int64_t(head.b) * g.S + k0 + c) * g.H + head.h) * g.K;
        for (int d = 0; d < g.K; ++d) {
          dk_out[at + d] = dk_tile[size_t(c) * g.Kp + d];
          dv_out[at + d] = dv_tile[size_t(c) * g.Kp + d];
        }
      }
    }
    for (int t = 0; t < g.Q; ++t) {  // q came scaled: dq carries the scale back
      const int64_t at = ((int64_t(head.b) * g.Q + t) * g.H + head.h) * g.K;
      for (int d = 0; d < g.K; ++d) dq_out[at + d] = dq_rows[size_t(t) * g.Kp + d] * scale;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

#define LCX_ATTRS                                                                            \
  .Attr<int64_t>("block_q").Attr<int64_t>("block_k").Attr<int64_t>("causal")                 \
      .Attr<int64_t>("offset").Attr<int64_t>("segments").Attr<int64_t>("bias")                \
      .Attr<int64_t>("window").Attr<int64_t>("chunk")

XLA_FFI_DEFINE_HANDLER_SYMBOL(LcxAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32_4>()
                                  .Arg<F32_4>()
                                  .Arg<F32_4>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<F32_1>()
                                  .Ret<F32_4>()
                                  .Ret<F32_3>() LCX_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LcxAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32_4>()
                                  .Arg<F32_4>()
                                  .Arg<F32_4>()
                                  .Arg<F32_4>()
                                  .Arg<F32_3>()
                                  .Arg<F32_4>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<S32_2>()
                                  .Arg<F32_1>()
                                  .Ret<F32_4>()
                                  .Ret<F32_4>()
                                  .Ret<F32_4>() LCX_ATTRS);
