"""The train state, its shardings, and the jitted init and train step (pure functions of state)."""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lcx.model.config import ModelConfig
from lcx.model.transformer import Transformer, abstract_model
from lcx.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from lcx.sharding import (CONTEXT, Rules, activation_sharding, named_sharding, param_shardings,
                          shard, to_context_order)

BATCH_NAMES = ("batch", "length")


class TrainProgram:
  """The state layout on the mesh and the jitted init / train step for one model and optimizer."""

  def __init__(self, model_cfg: ModelConfig, opt_cfg: OptimizerConfig, mesh: Mesh, rules: Rules,
               *, grad_accum_steps: int = 1, document_mask: bool = True, seed: int = 0):
    self.model_cfg, self.mesh, self.rules = model_cfg, mesh, rules
    self.grad_accum_steps, self.document_mask, self.seed = grad_accum_steps, document_mask, seed
    self.tx = make_optimizer(opt_cfg)
    self.schedule = learning_rate_schedule(opt_cfg)
    self.graphdef, abstract_params = abstract_model(model_cfg)
    self.abstract_state = jax.eval_shape(self._init_state)
    replicated = NamedSharding(mesh, P())
    params_sh = param_shardings(abstract_params, mesh, rules)
    opt_sh = optax.tree_map_params(
        self.tx, lambda _, sharding: sharding, self.abstract_state["opt_state"], params_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, nnx.Variable))
    self.state_shardings = {"params": params_sh, "opt_state": opt_sh, "step": replicated}
    self.batch_sharding = named_sharding(mesh, BATCH_NAMES, rules)
    self.init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    # A fine-tune: given parameters, a fresh optimizer and schedule.
    self.init_from_params = jax.jit(self._state_from_params, in_shardings=(params_sh,),
                                    out_shardings=self.state_shardings)
    self.step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding),
                        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    # A copy made on the devices (device_put cannot copy arrays other processes hold parts of).
    self._copy = jax.jit(lambda state: jax.tree.map(jnp.copy, state),
                         in_shardings=(self.state_shardings,), out_shardings=self.state_shardings)

  def _init_state(self):
    model = Transformer(self.model_cfg, rngs=nnx.Rngs(self.seed))
    return self._state_from_params(nnx.state(model, nnx.Param))

  def _state_from_params(self, params):
    return {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}

  def abstract_state_with_shardings(self):
    """ShapeDtypeStructs carrying the target shardings, the restore target for checkpoints."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)

  def global_batch(self, local_batch: dict) -> dict:
    """Global arrays from this process's rows (the same code on one host and many); under context
    parallelism each row in the load-balanced order the model takes (the loss, a weighted mean
    over tokens, does not depend on their order)."""
    context = int(self.mesh.shape.get(CONTEXT, 1))
    return {k: jax.make_array_from_process_local_data(self.batch_sharding,
                                                       to_context_order(v, context, axis=1))
            for k, v in local_batch.items()}

  def loss(self, params, batch) -> jax.Array:
    model = nnx.merge(self.graphdef, params)
    segment_ids = batch["segment_ids"] if self.document_mask else None
    losses = model.losses(batch["tokens"], batch["positions"], batch["targets"], segment_ids)
    weights = batch["weights"]  # 1 but for upweighted retrieval answers (lcx.data.mixture)
    return (losses * weights).sum() / weights.sum()

  def _grads(self, params, batch):
    value_and_grad = jax.value_and_grad(self.loss)
    if self.grad_accum_steps == 1:
      return value_and_grad(params, batch)
    n = self.grad_accum_steps

    def split(x):
      # Microbatch i takes rows i, i + n, ...: every device keeps a share of every microbatch.
      x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
      return shard(x, (None, *BATCH_NAMES))

    def accumulate(carry, micro):
      loss, grads = value_and_grad(params, micro)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, jax.tree.map(split, batch))
    return jax.tree.map(lambda x: x / n, (loss, grads))

  def _train_step(self, state, batch):
    with activation_sharding(self.mesh, self.rules):
      loss, grads = self._grads(state["params"], batch)
      updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    # Whether every array of the new state is finite: one pass over the state, no extra compile.
    finite = jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(new_state)
                        if jnp.issubdtype(x.dtype, jnp.inexact)]).all()
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": self.schedule(state["step"]), "state_finite": finite}
    return new_state, metrics

  def health(self, state, batch) -> dict:
    """Metrics of one more step from `state`, on a copy: the loss and gradient norm of the
    state's own parameters and whether its update stays finite. A step's logged loss is that of
    the parameters before it, so a checkpoint checks its own this way (the compiled step is
    reused; the copy costs one state's memory for the moment)."""
    _, metrics = self.step(self._copy(state), batch)
    return jax.device_get(metrics)
