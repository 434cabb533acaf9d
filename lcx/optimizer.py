"""The optimizer: AdamW with a warmup-then-decay schedule, and the position scheme's parameters at
their own learning rate and without weight decay."""
import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float
  warmup_steps: int
  steps: int
  schedule: str = "cosine"
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  # The position scheme's own parameters (T5's table, KERPLE's r1 and r2, FIRE's MLP): their
  # learning rate as a multiple of the model's, and never weight decay (it would pull a bias
  # toward "no position information"). Adam moves a parameter by about the learning rate a step,
  # and a sharp bias needs logits several units apart: with short runs at the model's rate the
  # bias never gets there.
  position_lr_scale: float = 1.0


def learning_rate_schedule(c: OptimizerConfig) -> optax.Schedule:
  """Linear warmup, then cosine or linear decay to min_lr_ratio x peak, or constant."""
  warmup = max(min(c.warmup_steps, c.steps), 0)
  decay_steps = max(c.steps - warmup, 1)
  end = c.learning_rate * c.min_lr_ratio
  if c.schedule == "cosine":
    decay = optax.cosine_decay_schedule(c.learning_rate, decay_steps, alpha=c.min_lr_ratio)
  elif c.schedule == "linear":
    decay = optax.linear_schedule(c.learning_rate, end, decay_steps)
  elif c.schedule == "constant":
    decay = optax.constant_schedule(c.learning_rate)
  else:
    raise ValueError(f"train.schedule={c.schedule!r} is unknown; allowed: cosine, linear, constant")
  if warmup:
    decay = optax.join_schedules([optax.linear_schedule(0.0, c.learning_rate, warmup), decay],
                                 [warmup])
  # Update n (counting from 0) uses the rate at step n + 1, so the first update is not wasted
  # on a rate of zero and the last one reaches the final rate.
  return lambda count: decay(count + 1)


# Where the model keeps its position schemes' parameters: one scheme's, or a per-layer pattern's.
POSITION_PARAMS = ("position", "position_layers")


def _is_position_param(path) -> bool:
  return bool(path) and getattr(path[0], "key", None) in POSITION_PARAMS


def _decay_mask(params):
  """Weight decay for matrices only (norms' scales and other vectors keep their value), and not
  the position scheme's parameters."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim >= 2 and not _is_position_param(path), params)


def _scale_by_learning_rate(schedule: optax.Schedule, position_scale: float):
  """optax.scale_by_learning_rate with the position scheme's parameters at position_scale times
  the rate. Its state is the same ScaleByScheduleState, so checkpoints keep their layout."""
  base = optax.scale_by_learning_rate(schedule)
  if position_scale == 1.0:
    return base

  def update(updates, state, params=None):
    updates, state = base.update(updates, state, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * position_scale if _is_position_param(path) else u, updates), state
  return optax.GradientTransformation(base.init, update)


def make_optimizer(c: OptimizerConfig) -> optax.GradientTransformation:
  # AdamW as optax builds it (the same state layout), with the position parameters' own rate.
  adamw = optax.chain(
      optax.scale_by_adam(b1=c.b1, b2=c.b2),
      optax.add_decayed_weights(c.weight_decay, _decay_mask),
      _scale_by_learning_rate(learning_rate_schedule(c), c.position_lr_scale))
  if c.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw)
  return adamw
