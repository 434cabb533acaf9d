"""Position-scheme math against independent formulas, and the registry."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import positions
from lcx.model import ModelConfig, Transformer


def _rotate_one(x, position, inv_freq, layout):
  return positions.apply_rope(x[None, None, None, :], jnp.array([[position]]), inv_freq,
                              layout)[0, 0, 0]


@pytest.mark.parametrize("offset", [0, 5000, -3])
def test_rotary_angles_for_packed_rows_and_positions_past_the_row(offset):
  # Packed rows restart at 0 (within the row's table of L positions); offsets move positions out
  # of it, onto the direct formula. Both must give cos and sin of position * theta.
  inv_freq = positions.rope_inverse_frequencies(8, 10000.0)
  pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0], [7, 6, 5, 4, 3, 2, 1, 0]]) + offset
  cos, sin = jax.jit(positions.rotary_cos_sin)(jnp.asarray(pos, jnp.int32), inv_freq)
  angles = pos[..., None] * np.asarray(inv_freq, np.float64)
  np.testing.assert_allclose(cos, np.cos(angles), atol=2e-4)
  np.testing.assert_allclose(sin, np.sin(angles), atol=2e-4)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_scores_depend_only_on_distance(layout, fraction):
  dim = 16
  rot = positions.rotary_dim(dim, fraction)
  inv_freq = positions.rope_inverse_frequencies(rot, 10000.0)
  q, k = jax.random.normal(jax.random.key(0), (2, dim))
  score = lambda m, n: float(jnp.dot(_rotate_one(q, m, inv_freq, layout),
                                     _rotate_one(k, n, inv_freq, layout)))
  for m, n in [(5, 2), (7, 7), (3, 11)]:
    for shift in (1, 100, 4093):
      assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)
  assert abs(score(5, 2) - score(9, 2)) > 1e-3  # and it does depend on the distance


def test_rope_interleaved_is_complex_rotation():
  dim, base, m = 8, 500.0, 37
  x = np.random.default_rng(0).normal(size=dim).astype(np.float32)
  theta = np.array([base ** (-2 * i / dim) for i in range(dim // 2)])
  z = (x[0::2] + 1j * x[1::2]) * np.exp(1j * m * theta)
  expected = np.stack([z.real, z.imag], axis=-1).reshape(dim)
  inv_freq = positions.rope_inverse_frequencies(dim, base)
  np.testing.assert_allclose(_rotate_one(jnp.asarray(x), m, inv_freq, "interleaved"), expected,
                             rtol=1e-5, atol=1e-5)
  # The half layout is the same rotation on a permutation of the dims.
  perm = np.concatenate([np.arange(0, dim, 2), np.arange(1, dim, 2)])
  half = _rotate_one(jnp.asarray(x[perm]), m, inv_freq, "half")
  np.testing.assert_allclose(half, expected[perm], rtol=1e-5, atol=1e-5)


def test_partial_rotary_leaves_the_rest():
  x = jnp.arange(12, dtype=jnp.float32)
  inv_freq = positions.rope_inverse_frequencies(positions.rotary_dim(12, 0.5), 10000.0)
  out = _rotate_one(x, 9, inv_freq, "half")
  np.testing.assert_array_equal(out[6:], x[6:])
  assert not np.allclose(out[:6], x[:6])


def test_rope_inverse_frequencies():
  np.testing.assert_allclose(positions.rope_inverse_frequencies(8, 10000.0),
                             [1.0, 0.1, 0.01, 0.001], rtol=1e-6)


def test_alibi_slopes_match_the_paper():
  np.testing.assert_allclose(positions.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
  # 12 heads: the 8-head slopes, then every other slope of 16 heads: 2^-0.5, 2^-1.5, ...
  expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
  np.testing.assert_allclose(positions.alibi_slopes(12), expected, rtol=1e-6)
  np.testing.assert_allclose(positions.alibi_slopes(4), [0.25, 0.0625, 2 ** -6, 2 ** -8])


def test_alibi_bias_is_linear_in_distance():
  q = jnp.arange(6)[None]
  bias = positions.alibi_bias(q, q, positions.alibi_slopes(2))
  slopes = [2.0 ** -4, 2.0 ** -8]
  for h in range(2):
    for i in range(6):
      for j in range(i + 1):
        assert float(bias[0, h, i, j]) == pytest.approx(-slopes[h] * (i - j))


def test_sinusoidal_table_values_at_any_position():
  dim = 10
  pos = np.array([0, 1, 7, 123_456])
  table = np.asarray(positions.sinusoidal_table(jnp.asarray(pos), dim))
  assert table.shape == (4, dim)
  for r, p in enumerate(pos):
    for i in range(dim // 2):
      angle = p / 10000 ** (2 * i / dim)
      assert table[r, 2 * i] == pytest.approx(math.sin(angle), abs=2e-3)
      assert table[r, 2 * i + 1] == pytest.approx(math.cos(angle), abs=2e-3)


def test_learned_positions_refuse_longer_sequences():
  model = Transformer(ModelConfig(vocab_size=64, d_model=16, n_heads=2, head_dim=8, mlp_dim=32,
                                  position="learned", max_len=8), rngs=nnx.Rngs(0))
  tokens = jnp.zeros((1, 8), jnp.int32)
  model(tokens, jnp.arange(8)[None])
  with pytest.raises(ValueError, match=r"model.max_len=8.*lengths <= 8"):
    model(jnp.zeros((1, 9), jnp.int32), jnp.arange(9)[None])


def test_unknown_scheme_lists_the_allowed():
  assert positions.available() == tuple(sorted(positions.available()))
  assert {"none", "rope", "alibi", "t5", "kerple", "fire", "xpos"} <= set(positions.available())
  with pytest.raises(ValueError, match="model.position='cope' is unknown; allowed: "
                                       + ", ".join(positions.available())):
    positions.make("cope", positions.PositionConfig(16, 2, 8, 8), rngs=nnx.Rngs(0))


def _t5_bucket_reference(n, buckets, max_distance):
  """T5's relative_position_bucket for a decoder (bidirectional=False), one distance q - k at a
  time, as its reference code computes it."""
  n = max(n, 0)
  exact = buckets // 2
  if n < exact:
    return n
  large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (buckets - exact))
  return min(large, buckets - 1)


@pytest.mark.parametrize("buckets, max_distance", [(32, 128), (8, 20), (33, 1000)])
def test_t5_buckets_follow_the_reference(buckets, max_distance):
  distances = np.arange(-5, 3 * max_distance)
  got = np.asarray(positions.t5_buckets(jnp.asarray(distances), buckets, max_distance))
  np.testing.assert_array_equal(
      got, [_t5_bucket_reference(int(n), buckets, max_distance) for n in distances])
  # exact, then logarithmic (non-decreasing), then flat from max_distance on
  assert list(got[5:5 + buckets // 2]) == list(range(buckets // 2))
  assert np.all(np.diff(got[5:]) >= 0) and np.all(got[5 + max_distance:] == buckets - 1)


def test_t5_bias_is_one_table_looked_up_by_bucket():
  cfg = positions.PositionConfig(d_model=16, n_heads=3, head_dim=8, max_len=64,
                                 options=positions.T5Options(buckets=8, max_distance=20))
  scheme = positions.make("t5", cfg, rngs=nnx.Rngs(0))
  table = np.asarray(scheme.bias_table[...])
  assert table.shape == (8, 3)
  q, k = jnp.asarray([[40, 41]]), jnp.arange(42)[None]
  bias = np.asarray(scheme.bias(q, k, layer=0))
  assert bias.shape == (1, 3, 2, 42)
  for qi, qp in enumerate([40, 41]):
    for kp in range(42):
      np.testing.assert_array_equal(bias[0, :, qi, kp], table[_t5_bucket_reference(qp - kp, 8, 20)])
  # shift invariant: it depends on q - k only
  np.testing.assert_array_equal(np.asarray(scheme.bias(q + 100, k + 100, layer=1)), bias)


def test_a_registered_scheme_plugs_into_the_model():
  @positions.register("test_recency")
  class Recency(positions.PositionScheme):
    """Strongly prefers the previous token: enough to change every output."""

    BIAS = positions.BiasKind(learned=False)

    def __init__(self, cfg, *, rngs):
      del cfg, rngs

    def bias(self, q_pos, k_pos, layer):
      return jnp.where(q_pos[:, None, :, None] - k_pos[:, None, None, :] == 1, 10.0, 0.0)

  try:
    cfg = dict(vocab_size=64, d_model=16, n_heads=2, head_dim=8, mlp_dim=32)
    tokens = jax.random.randint(jax.random.key(1), (1, 6), 0, 64)
    pos = jnp.arange(6)[None]
    plain = Transformer(ModelConfig(position="none", **cfg), rngs=nnx.Rngs(0))(tokens, pos)
    recency = Transformer(ModelConfig(position="test_recency", **cfg), rngs=nnx.Rngs(0))(tokens, pos)
    assert "test_recency" in positions.available()
    np.testing.assert_array_equal(plain[:, 0], recency[:, 0])  # nothing before token 0
    assert not np.allclose(plain[:, 1:], recency[:, 1:], atol=1e-4)
  finally:
    positions.base.REGISTRY.unregister("test_recency")


def _rope_cfg(scaling, factor, original_length=128, **kw):
  return positions.RopeOptions(scaling=scaling, factor=factor, original_length=original_length,
                               **kw)


@pytest.mark.parametrize("scaling", sorted(positions.ROPE_SCALINGS))
def test_every_scaling_is_the_identity_at_factor_one(scaling):
  plain, _ = positions.scaled_frequencies(16, _rope_cfg("none", 1.0), 128)
  for length in (16, 128):
    inv_freq, scale = positions.scaled_frequencies(16, _rope_cfg(scaling, 1.0), length)
    np.testing.assert_allclose(inv_freq, plain, rtol=1e-6)
    assert scale == 1.0


def test_linear_interpolation_divides_positions():
  x = jax.random.normal(jax.random.key(0), (1, 5, 1, 8))
  pos = jnp.arange(0, 50, 10)[None]
  inv_freq, _ = positions.scaled_frequencies(8, _rope_cfg("linear", 4.0), 5)
  plain = positions.rope_inverse_frequencies(8)
  np.testing.assert_allclose(positions.apply_rope(x, pos, inv_freq),
                             positions.apply_rope(x, pos / 4.0, plain), rtol=1e-5, atol=1e-6)


def test_ntk_aware_base():
  # d = 4, s = 4: base' = 10000 * 4^(4/2) = 160000, so theta = [1, 160000^-1/2 = 1/400].
  inv_freq, scale = positions.scaled_frequencies(4, _rope_cfg("ntk", 4.0), 10_000)
  np.testing.assert_allclose(inv_freq, [1.0, 1 / 400], rtol=1e-6)
  assert scale == 1.0


def test_dynamic_ntk_follows_the_length():
  assert positions.dynamic_factor(4.0, 100, 128) == 1.0
  assert positions.dynamic_factor(4.0, 128, 128) == 1.0
  assert positions.dynamic_factor(4.0, 256, 128) == pytest.approx(5.0)  # 4 * 2 - 3
  assert positions.dynamic_factor(1.0, 512, 128) == pytest.approx(4.0)
  within, _ = positions.scaled_frequencies(8, _rope_cfg("dynamic_ntk", 4.0), 128)
  np.testing.assert_allclose(within, positions.rope_inverse_frequencies(8), rtol=1e-6)
  beyond, _ = positions.scaled_frequencies(8, _rope_cfg("dynamic_ntk", 4.0), 256)
  np.testing.assert_allclose(beyond, positions.rope_inverse_frequencies(8, 10000 * 5 ** (8 / 6)),
                             rtol=1e-6)


def test_yarn_by_parts_on_known_values():
  """The paper's ramp (yarn_ramp="turns"): gamma linear in the turns over the original length."""
  s, L0, dim = 4.0, 128, 8
  theta = [10000 ** (-2 * i / dim) for i in range(dim // 2)]  # 1, 0.1, 0.01, 0.001
  expected = []
  for t in theta:
    turns = L0 * t / (2 * math.pi)  # 20.4, 2.04, 0.204, 0.0204
    gamma = min(max((turns - 1) / (32 - 1), 0.0), 1.0)
    expected.append((1 - gamma) * t / s + gamma * t)
  inv_freq, scale = positions.scaled_frequencies(dim, _rope_cfg("yarn", s, L0, yarn_ramp="turns"),
                                                 512)
  np.testing.assert_allclose(inv_freq, expected, rtol=1e-6)
  # Slow dims are fully interpolated; the fastest keeps most of its frequency.
  assert expected[3] == pytest.approx(theta[3] / s) and expected[0] > theta[0] / 2
  assert scale == pytest.approx(0.1 * math.log(4) + 1)
  # The temperature scales the rotated dims of q and k, so logits grow by its square.
  x = jax.random.normal(jax.random.key(1), (1, 1, 1, 12))
  rot = positions.rotary_dim(12, 0.5)
  out = positions.apply_rope(x, jnp.zeros((1, 1)), inv_freq[: rot // 2], scale=scale)
  np.testing.assert_allclose(out[..., :rot], x[..., :rot] * scale, rtol=1e-6)
  np.testing.assert_array_equal(out[..., rot:], x[..., rot:])


def _reference_yarn(dim, base, factor, original_length, beta_fast=32.0, beta_slow=1.0):
  """YaRN's inverse frequencies as its reference code computes them (find_correction_range and
  linear_ramp_mask over the pair index), written out in plain Python."""
  def correction_dim(rotations):
    return dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))
  low = max(math.floor(correction_dim(beta_fast)), 0)
  high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  out = []
  for i in range(dim // 2):
    extrapolate = 1 - min(max((i - low) / (high - low), 0.0), 1.0)  # 1: keep theta_i
    theta = base ** (-2 * i / dim)
    out.append(theta / factor * (1 - extrapolate) + theta * extrapolate)
  return out


@pytest.mark.parametrize("dim,base,factor,length", [(128, 10000.0, 16.0, 4096),
                                                    (64, 10000.0, 4.0, 2048),
                                                    (16, 10000.0, 4.0, 128),
                                                    (128, 500000.0, 8.0, 8192)])
def test_yarn_default_ramp_is_the_reference_codes(dim, base, factor, length):
  cfg = _rope_cfg("yarn", factor, length, base=base)
  assert cfg.yarn_ramp == "dims"
  inv_freq, scale = positions.scaled_frequencies(dim, cfg, 4 * length)
  np.testing.assert_allclose(inv_freq, _reference_yarn(dim, base, factor, length), rtol=1e-5)
  assert scale == pytest.approx(0.1 * math.log(factor) + 1)


def test_yarn_ramps_differ_where_it_matters():
  """Llama-2-like (d=128, L=4096, s=16): the two ramps agree on the fastest and slowest dims and
  differ by tens of percent in between; a run records which one it used."""
  dims, _ = positions.scaled_frequencies(128, _rope_cfg("yarn", 16.0, 4096), 4096)
  turns, _ = positions.scaled_frequencies(128, _rope_cfg("yarn", 16.0, 4096, yarn_ramp="turns"),
                                          4096)
  ratio = np.asarray(dims) / np.asarray(turns)
  np.testing.assert_allclose(ratio[:5], 1.0, rtol=1e-6)
  np.testing.assert_allclose(ratio[-5:], 1.0, rtol=1e-6)
  assert np.abs(ratio - 1).max() > 0.3
  with pytest.raises(ValueError, match="yarn_ramp='linear' is unknown; allowed: dims, turns"):
    positions.scaled_frequencies(128, _rope_cfg("yarn", 16.0, 4096, yarn_ramp="linear"), 4096)


def _cfg(options=None, n_layers=2, n_heads=3, head_dim=8, **rope):
  """A scheme's config: its options, or RoPE's given as keywords."""
  return positions.PositionConfig(d_model=16, n_heads=n_heads, head_dim=head_dim, max_len=64,
                                  n_layers=n_layers,
                                  options=positions.RopeOptions(**rope) if rope else options)


@pytest.mark.parametrize("name", positions.available())
def test_every_scheme_says_truly_whether_its_bias_is_learned(name):
  """A kernel trusts BIAS to decide whether it must return a parameter gradient, so a scheme's
  declaration must match what it holds: a bias with parameters is declared learned."""
  scheme = positions.make(name, _cfg(), rngs=nnx.Rngs(0))
  has_params = bool(jax.tree.leaves(nnx.state(scheme, nnx.Param)))
  kind = positions.bias_kind(name)
  if kind is None:
    assert scheme.bias_fn(0) is None and scheme.log_gates(jnp.ones((2, 5, 16)), 0) is None
    return
  if kind.rows:  # made from the layer's input: log gates, no function of positions
    assert scheme.bias_fn(0) is None and kind.learned == has_params, name
    gates = scheme.log_gates(jnp.ones((2, 5, 16)), 1)
    assert gates.shape == (2, 5, 3) and gates.dtype == jnp.float32
    return
  bias = scheme.bias_fn(1)
  assert bias.kind == kind
  assert kind.learned == has_params, name
  out = bias(jnp.arange(5)[None], jnp.arange(7)[None])
  assert out.shape[1:] == (3, 5, 7) and out.dtype == jnp.float32


def _kerple_reference(distance, r1, r2, kind):
  """The paper's kernels, in float64, per head."""
  d = np.abs(np.asarray(distance, np.float64))
  if kind == "log":
    return np.stack([-a * np.log(1 + b * d) for a, b in zip(r1, r2)])
  return np.stack([-a * d ** b for a, b in zip(r1, r2)])


@pytest.mark.parametrize("kind", ["log", "power"])
def test_kerple_follows_the_papers_kernels_per_layer(kind):
  scheme = positions.make("kerple", _cfg(positions.KerpleOptions(kind=kind)), rngs=nnx.Rngs(0))
  q, k = jnp.asarray([[0, 5, 9, 300]]), jnp.arange(10)[None]
  distance = np.asarray(q)[0, :, None] - np.asarray(k)[0, None, :]
  for layer in (0, 1):
    # the reference code clamps at 0.01 before use (this seed's r2 of head 0 starts below it)
    r1, r2 = (np.maximum(np.asarray(p[...][layer]), 0.01) for p in (scheme.r1, scheme.r2))
    np.testing.assert_allclose(scheme.bias(q, k, layer)[0],
                               _kerple_reference(distance, r1, r2, kind), rtol=1e-5, atol=1e-6)
  assert not np.allclose(scheme.bias(q, k, 0), scheme.bias(q, k, 1))  # one set per layer


def test_kerple_keeps_its_parameters_in_range_and_still_learns_at_the_bound():
  scheme = positions.make("kerple", _cfg(positions.KerpleOptions(kind="power"), n_layers=1),
                          rngs=nnx.Rngs(0))
  scheme.r1[...] = jnp.asarray([[-0.5, 0.3, 1.0]])  # pushed below 0 by an optimizer
  scheme.r2[...] = jnp.asarray([[0.5, 3.0, -1.0]])  # power's r2 must stay in (0, 2]
  r1, r2 = scheme.parameters(0)
  np.testing.assert_allclose(r1, [0.01, 0.3, 1.0], rtol=1e-6)
  np.testing.assert_allclose(r2, [0.5, 2.0, 0.01], rtol=1e-6)
  graphdef, state = nnx.split(scheme)
  pos = jnp.arange(6)[None]
  grads = jax.grad(lambda s: nnx.merge(graphdef, s).bias(pos, pos, 0).sum())(state)
  for g in (grads["r1"][...], grads["r2"][...]):
    assert np.isfinite(g).all()  # distance 0 with power gives no NaN
    assert (np.abs(g) > 0).all()  # straight through the bound: a clipped value still learns


def _fire_reference(q_pos, k_pos, c, threshold, w1, b1, w2, b2):
  """The paper's b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), in float64."""
  out = np.zeros((w2.shape[1], len(q_pos), len(k_pos)))
  for a, i in enumerate(q_pos):
    for b, j in enumerate(k_pos):
      x = math.log(c * abs(i - j) + 1) / (math.log(c * max(threshold, i) + 1) + 1e-6)
      out[:, a, b] = np.maximum(x * w1 + b1, 0) @ w2 + b2
  return out


@pytest.mark.parametrize("shared", [False, True])
def test_fire_follows_the_papers_equation(shared):
  options = positions.FireOptions(hidden=4, shared=shared, threshold=8.0)
  scheme = positions.make("fire", _cfg(options), rngs=nnx.Rngs(0))
  assert scheme.w2[...].shape == ((1 if shared else 2), 4, 3)
  q, k = [0, 3, 7, 20, 100], list(range(0, 101, 10))
  for layer in (0, 1):
    i = 0 if shared else layer
    values = [np.asarray(p[...][i], np.float64) for p in (scheme.w1, scheme.b1, scheme.w2,
                                                          scheme.b2)]
    reference = _fire_reference(q, k, 0.1, 8.0, *values)
    np.testing.assert_allclose(scheme.bias(jnp.asarray([q]), jnp.asarray([k]), layer)[0],
                               reference, rtol=1e-4, atol=1e-5)


def test_fire_input_lies_in_the_unit_interval_at_every_length():
  """Progressive interpolation: for every key j <= i the input is in [0, 1], however long the
  context; below the threshold the normalizer is the same for every query."""
  for length in (64, 4096, 32768):
    q = jnp.asarray([[0, 1, length // 2, length - 1]])
    k = jnp.arange(0, length, max(1, length // 512))[None]
    x = np.asarray(positions.fire_input(q, k, 0.1, 512.0))[0]
    visible = np.asarray(q)[0, :, None] >= np.asarray(k)[0, None, :]
    assert x[visible].min() >= 0 and x[visible].max() <= 1
  x = np.asarray(positions.fire_input(jnp.asarray([[10, 100]]), jnp.asarray([[0, 90]]), 0.1, 512.))
  np.testing.assert_allclose(x[0, 0, 0], x[0, 1, 1])  # same distance below the threshold


def _xpos_logit(q, k, n, m, inv_freq, zeta, gamma):
  """The paper's logit in float64: pair i of q at n and of k at m, rotated by (n - m) theta_i,
  times zeta_i^((n - m) / gamma)."""
  F = len(inv_freq)
  total = 0.0
  for i in range(F):
    angle = (n - m) * inv_freq[i]
    qa, qb, ka, kb = q[i], q[i + F], k[i], k[i + F]  # "half" layout pairs
    rotated = (qa * ka + qb * kb) * math.cos(angle) + (qa * kb - qb * ka) * math.sin(angle)
    total += rotated * zeta[i] ** ((n - m) / gamma)
  return total


def test_xpos_logits_follow_the_paper_and_stay_finite_at_32k():
  scheme = positions.make("xpos", _cfg(positions.XposOptions(gamma=512.0), n_heads=1),
                          rngs=nnx.Rngs(0))
  d = 8
  zeta = np.asarray(positions.xpos_zeta(d), np.float64)
  np.testing.assert_allclose(zeta, [(2 * i + 0.4 * d) / (1.4 * d) for i in range(d // 2)])
  inv_freq = np.asarray(positions.rope_inverse_frequencies(d), np.float64)
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, d)), np.float64)
  length = 32768
  for n, m in ((5, 3), (20000, 19000), (32767, 32700), (32767, 0), (100, 100)):
    pos = jnp.asarray([[m, n]])
    xs = jnp.asarray(np.stack([x[1], x[0]])[None, :, None, :], jnp.float32)  # key at m, query at n
    q, k = scheme.rotate(xs, xs, pos, length)
    assert np.isfinite(np.asarray(q)).all() and np.isfinite(np.asarray(k)).all()
    logit = float(jnp.dot(q[0, 1, 0], k[0, 0, 0]))
    expected = _xpos_logit(x[0], x[1], n, m, inv_freq, zeta, 512.0)
    assert logit == pytest.approx(expected, rel=1e-3, abs=1e-30)
  # decays with distance: at 32K the fast pairs are gone, the slowest (zeta ~ 0.96) nearly too
  assert _xpos_logit(x[0], x[0], 32767, 0, inv_freq * 0, zeta, 512.0) < 1e-3 * float(x[0] @ x[0])


def test_p_rope_keeps_the_fastest_pairs_and_composes_with_scaling():
  assert positions.kept_pairs(8, 0.75) == 6 and positions.kept_pairs(8, 0.0) == 0
  full, _ = positions.scaled_frequencies(16, _rope_cfg("yarn", 4.0), 512)
  kept, scale = positions.scaled_frequencies(16, _rope_cfg("yarn", 4.0, keep=0.75), 512)
  np.testing.assert_array_equal(kept[:6], full[:6])  # YaRN's frequencies, then p-RoPE's cut
  np.testing.assert_array_equal(kept[6:], 0.0)
  assert scale == positions.yarn_temperature(4.0)
  scheme = positions.make("rope", _cfg(head_dim=16, keep=0.5), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 16))
  q, _ = scheme.rotate(x, x, jnp.arange(100, 105)[None])
  dropped = np.r_[4:8, 12:16]  # "half" layout: pairs (i, i + 8) for i = 4..7 are the slow half
  np.testing.assert_array_equal(np.asarray(q)[..., dropped], np.asarray(x)[..., dropped])
  assert not np.allclose(np.asarray(q)[..., :4], np.asarray(x)[..., :4])
