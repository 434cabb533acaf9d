"""Greedy decoding and answer likelihoods with a KV cache (Transformer.extend).

A prompt is read once into the caches (one call over all its tokens, with the model's attention
kernel), then each generated token is one more call; a candidate answer is one call over its
tokens on top of the prompt's caches, so scoring M candidates costs one prompt, not M. The caches
hold the whole window (prompt + answer - 1 tokens), so a scheme that depends on the length
(dynamic NTK) sees what a full forward would.

A model that streams segments with a memory (model.segment_len) has no such cache: each decoded
token, and each candidate answer, is one full forward over the window, segment by segment with
the memory carried, exactly as training and perplexity see the model (causal, so the slots not
yet decoded do not matter). It costs a forward per token instead of a step.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcx.evaluate.scoring import DoesNotFit, Scorer
from lcx.sharding import activation_sharding


class Decoder:
  """greedy(prompts, steps) -> tokens; answer_scores(prompts, answers, mask) -> (log-likelihoods,
  teacher-forced argmax matches)."""

  def __init__(self, scorer: Scorer):
    self.scorer = scorer
    self._greedy = jax.jit(self._greedy_fn, static_argnums=(2,))
    self._scores = jax.jit(self._scores_fn)

  def _prefill(self, params, prompt_BP, window: int):
    model = nnx.merge(self.scorer.graphdef, params)
    B, P = prompt_BP.shape
    caches = model.empty_caches(B, window)
    positions_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    logits_BPV, caches = model.extend(prompt_BP, positions_BP, caches)
    return model, logits_BPV[:, -1], caches

  def _greedy_fn(self, params, prompt_BP, steps: int):
    if nnx.merge(self.scorer.graphdef, params).cfg.segment_len:
      return self._streamed_greedy(params, prompt_BP, steps)
    with activation_sharding(self.scorer.mesh, self.scorer.rules):
      P = prompt_BP.shape[1]
      model, logits_BV, caches = self._prefill(params, prompt_BP, P + steps - 1)
      first_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

      def step(carry, position):
        token_B, caches = carry
        positions_B1 = jnp.full((token_B.shape[0], 1), position, jnp.int32)
        logits_B1V, caches = model.extend(token_B[:, None], positions_B1, caches)
        return (jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32), caches), token_B

      (last_B, _), tokens_SB = jax.lax.scan(step, (first_B, caches),
                                            jnp.arange(P, P + steps - 1, dtype=jnp.int32))
      return jnp.concatenate([tokens_SB.T, last_B[:, None]], axis=1)

  def _streamed_greedy(self, params, prompt_BP, steps: int):
    with activation_sharding(self.scorer.mesh, self.scorer.rules):
      model = nnx.merge(self.scorer.graphdef, params)
      (B, P), W = prompt_BP.shape, prompt_BP.shape[1] + steps - 1
      positions_BW = jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (B, W))

      def step(window_BW, i):  # the token after position P - 1 + i, written at P + i
        logits_BWV = model(window_BW, positions_BW)
        token_B = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_BWV, P - 1 + i, axis=1,
                                                          keepdims=False), axis=-1)
        token_B = token_B.astype(jnp.int32)
        return jax.lax.dynamic_update_slice_in_dim(window_BW, token_B[:, None],
                                                   jnp.minimum(P + i, W - 1), axis=1), token_B

      window_BW = jnp.pad(prompt_BP, ((0, 0), (0, steps - 1)))
      return jax.lax.scan(step, window_BW, jnp.arange(steps))[1].T

  def _scores_fn(self, params, prompt_BP, answers_BMC, mask_BMC):
    with activation_sharding(self.scorer.mesh, self.scorer.rules):
      (B, P), C = prompt_BP.shape, answers_BMC.shape[2]
      streamed = nnx.merge(self.scorer.graphdef, params).cfg.segment_len
      if streamed:  # one full forward per answer (see the module's docstring)
        model = nnx.merge(self.scorer.graphdef, params)
        positions_BW = jnp.broadcast_to(jnp.arange(P + C - 1, dtype=jnp.int32), (B, P + C - 1))
        logits_BV = model(prompt_BP, positions_BW[:, :P])[:, -1]
      else:
        model, logits_BV, caches = self._prefill(params, prompt_BP, P + C - 1)
      first_BM = jnp.take_along_axis(jax.nn.log_softmax(logits_BV), answers_BMC[:, :, 0], axis=1)
      first_right_BM = jnp.argmax(logits_BV, axis=-1)[:, None] == answers_BMC[:, :, 0]
      positions_BC = jnp.broadcast_to(jnp.arange(P, P + C - 1, dtype=jnp.int32), (B, C - 1))

      def one_answer(answer_BC):  # the caches are only read, so every answer starts from them
        if streamed:
          window_BW = jnp.concatenate([prompt_BP, answer_BC[:, :-1]], axis=1)
          logits_BCV = model(window_BW, positions_BW)[:, P:]
        else:
          logits_BCV, _ = model.extend(answer_BC[:, :-1], positions_BC, caches)
        logp_BC = jnp.take_along_axis(jax.nn.log_softmax(logits_BCV), answer_BC[:, 1:, None],
                                      axis=-1)[..., 0]
        return logp_BC, jnp.argmax(logits_BCV, axis=-1) == answer_BC[:, 1:]

      total_BM = first_BM * mask_BMC[:, :, 0]
      right_BM = first_right_BM | (mask_BMC[:, :, 0] == 0)
      if C > 1:
        logp_MBC, right_MBC = jax.lax.map(one_answer, answers_BMC.transpose(1, 0, 2))
        total_BM += jnp.sum(logp_MBC.transpose(1, 0, 2) * mask_BMC[:, :, 1:], axis=-1)
        right_BM &= jnp.all(right_MBC.transpose(1, 0, 2) | (mask_BMC[:, :, 1:] == 0), axis=-1)
      return jnp.stack([total_BM, right_BM.astype(jnp.float32)], axis=-1)

  def _batches(self, n: int, window: int):
    rows = self.scorer.batch_rows(window)
    for start in range(0, n, rows):
      yield start, min(start + rows, n), rows

  def _run(self, fn, arrays, n: int, window: int, out_shape, out_dtype):
    out = np.empty((n, *out_shape), out_dtype)
    for start, stop, rows in self._batches(n, window):
      chunk = []
      for a in arrays:
        part = a[start:stop]
        if stop - start < rows:  # fixed batch shapes: one compilation per shape
          part = np.concatenate([part, np.repeat(part[-1:], rows - (stop - start), axis=0)])
        chunk.append(jax.device_put(np.ascontiguousarray(part), self.scorer.sharding_for(part)))
      try:
        out[start:stop] = jax.device_get(fn(*chunk))[: stop - start]
      except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
          raise DoesNotFit(f"length {window} ran out of device memory at {rows} prompt(s) a "
                           "batch; evaluate shorter lengths") from None
        raise
    return out

  def greedy(self, prompts: np.ndarray, steps: int) -> np.ndarray:
    """(N, steps) tokens greedy decoding produces after each (N, P) prompt."""
    n, p = prompts.shape
    fn = lambda prompt: self._greedy(self.scorer.params, prompt, steps)
    return self._run(fn, [prompts.astype(np.int32)], n, p + steps - 1, (steps,), np.int32)

  def answer_scores(self, prompts: np.ndarray, answers: np.ndarray,
                    mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For M answers (N, M, C) after each (N, P) prompt: (N, M) log-likelihoods summed over the
    tokens where mask is 1 (shorter answers are padded and masked), and (N, M) whether every such
    token is the argmax given the true prefix (teacher forcing: for the true answer, whether
    greedy decoding produces it)."""
    n, p = prompts.shape
    fn = lambda prompt, answer, m: self._scores(self.scorer.params, prompt, answer, m)
    out = self._run(fn, [prompts.astype(np.int32), answers.astype(np.int32),
                         mask.astype(np.float32)], n, p + answers.shape[2] - 1,
                    (answers.shape[1], 2), np.float32)
    return out[..., 0], out[..., 1] > 0.5
