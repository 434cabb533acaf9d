"""Validate and resolve a config, and turn its parts into the small dataclasses layers receive.

Every problem is reported as one line naming the field and what it allows.
"""
import dataclasses
import functools
import math
import pathlib

import ml_collections

from lcx import attention, memory, positions
from lcx.data import retrieval
from lcx.data import mixture
from lcx.data.mixture import default_retrieval, fill_missing_data  # the presets' default_retrieval
from lcx.data.tokenizers import DEFAULT as DEFAULT_TOKENIZER, FILE_PREFIXES, make_tokenizer
from lcx.model.config import REMAT_POLICIES, ModelConfig
from lcx.model.temperature import TemperatureOptions
from lcx.sharding import MESH_AXES, resolve_mesh_shape
from lcx.optimizer import OptimizerConfig

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "linear", "constant")
WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_INIT_TIMEOUT_S = 10.0  # W&B's own waits 90 s, and 10 s more to print who is logged in


class ConfigError(ValueError):
  """A config field holds a value lcx cannot run with."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _get(c, name: str):
  return functools.reduce(getattr, name.split("."), c)


def _positive(c, name: str) -> None:
  value = _get(c, name)
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           f"config.{name}={value!r} must be a positive integer")


def _choice(c, name: str, allowed) -> None:
  value = _get(c, name)
  _require(value in allowed, f"config.{name}={value!r} is not allowed; allowed: "
           f"{', '.join(map(str, allowed))}")


def _tokenizer(d):
  """The run's tokenizer, loaded (a SentencePiece or tokenizer.json file must exist and be one).
  A file's path is made absolute and its hash recorded in data.tokenizer_sha256; a hash already
  there (a saved run's) must match the file."""
  if "tokenizer_sha256" not in d:
    d.tokenizer_sha256 = ""
  d.tokenizer = d.tokenizer or DEFAULT_TOKENIZER  # the saved config says which
  for prefix in FILE_PREFIXES:
    if d.tokenizer.startswith(prefix):
      path = pathlib.Path(d.tokenizer.removeprefix(prefix)).expanduser()
      d.tokenizer = f"{prefix}{path.resolve() if path.exists() else path}"
  try:
    tokenizer = make_tokenizer(d.tokenizer, d.tokenizer_sha256)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  d.tokenizer_sha256 = getattr(tokenizer, "sha256", "")
  return tokenizer


def _option_types() -> dict[str, type]:
  """model.<name> -> its Options: every position scheme's and memory mechanism's that has some."""
  return {**positions.option_types(), **memory.option_types()}


# Options that moved: (section, field) -> the section a run saved before the move kept it in.
_MOVED_OPTIONS = {("xpos", field): "rope" for field in ("base", "fraction", "layout")}


def fill_missing(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with the fields added since a run was saved filled in as that run behaved. Called
  before overrides are applied to a saved config, so an override of a new field finds it."""
  c = ml_collections.ConfigDict(config.to_dict())
  m, d = c.model, c.data
  for name in ("attention_block", "remat", "scan_layers", "memory", "segment_len", "memory_reset",
               "tied_logit_scale", "qk_norm", "window", "chunk", "attention_layers"):
    if name not in m:  # runs saved before these existed
      m[name] = getattr(ModelConfig, name)
  if "position_layers" not in m:  # runs saved before per-layer patterns: one scheme
    m.position_layers = ()
  if "temperature" not in m:  # runs saved before attention temperature: none
    m.temperature = ml_collections.ConfigDict(dataclasses.asdict(TemperatureOptions()))
  if "n_kv_heads" not in m:  # runs saved before grouped-query attention: one per query head
    m.n_kv_heads = m.n_heads
  if c.get("mesh") and "rules" in c.mesh:
    c.mesh.rules = _with_length_rule(_with_kv_heads_rule(c.mesh.rules))
  if c.get("mesh") and "context" not in c.mesh:  # runs saved before context parallelism
    c.mesh.context = 1
  if c.get("mesh") and "context_exchange" not in c.mesh:  # before its ring variant
    c.mesh.context_exchange = ModelConfig.context_exchange
  for name, options in _option_types().items():  # sections and fields added since: defaults
    if name not in m:
      m[name] = ml_collections.ConfigDict()
    section = m[name]
    for field in dataclasses.fields(options):
      if field.name in section:
        continue
      moved = _MOVED_OPTIONS.get((name, field.name))
      if moved and moved in m:  # a run saved before the field moved here keeps its value
        section[field.name] = m[moved][field.name]
        if m.position == name:  # and the old place goes back to its default, unused
          m[moved][field.name] = getattr(_option_types()[moved](), field.name)
      elif name == "rope" and field.name == "yarn_ramp":  # YaRN saved before the option: turns
        section.yarn_ramp = "turns" if section.scaling == "yarn" else "dims"
      else:
        section[field.name] = field.default
  if "resume_changes" not in c:
    c.resume_changes = "refuse"
  if "finetune_changes" not in c:  # runs saved before fine-tunes could change the model
    c.finetune_changes = ()
  if "init_timeout_s" not in c.wandb:
    c.wandb.init_timeout_s = WANDB_INIT_TIMEOUT_S
  fill_missing_data(d)
  if "probe_trials" not in c.eval:  # runs saved before the retrieval probe: none
    c.eval.probe_tasks, c.eval.probe_trials = (), 0
  return c


def _position_layers(m: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The scheme of each entry of model.position_layers, checked (model.position alone without
  one); with a pattern, model.position becomes its first entry's scheme."""
  entries = m.position_layers
  if isinstance(entries, str):
    entries = m.position_layers = (entries,)
  if not entries:
    return (m.position,)
  _require(isinstance(entries, (tuple, list)) and all(isinstance(e, str) for e in entries),
           f"config.model.position_layers={entries!r} must be a tuple of scheme names, e.g. "
           "('rope', 'rope', 'rope', 'none')")
  try:
    pattern = position_pattern(m)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  m.position_layers = tuple(entries)
  m.position = pattern[0][0]
  return tuple(name for name, _ in pattern)


LAYER_KINDS = ("local", "global")


def _local_layers(m: ml_collections.ConfigDict) -> str:
  """model.window, chunk and attention_layers checked; how layers attend locally ("window",
  "chunk"; "": none does)."""
  for name in ("window", "chunk"):
    value = m[name]
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
             f"config.model.{name}={value!r} must be an integer >= 0 (0: off)")
  _require(not (m.window and m.chunk), f"config.model.window={m.window} and config.model.chunk="
           f"{m.chunk}: a local layer has one or the other; set the other to 0")
  entries = m.attention_layers
  if isinstance(entries, str):
    entries = m.attention_layers = (entries,)
  bad = [e for e in entries if e not in LAYER_KINDS]
  _require(not bad, f"config.model.attention_layers={tuple(entries)!r}: {bad[0] if bad else ''!r} "
           f"is not a kind of layer; allowed: {', '.join(LAYER_KINDS)}")
  local = bool(m.window or m.chunk) and (not entries or "local" in entries)
  _require(not entries or m.window or m.chunk,
           f"config.model.attention_layers={tuple(entries)!r} places local layers, and "
           "config.model.window and config.model.chunk are 0; set one of them")
  _require(not local or m.memory == "none",
           f"config.model.memory={m.memory!r} with local layers (model.window / model.chunk): a "
           "memory mechanism with local attention is not supported; set one of them off")
  period = math.lcm(len(m.position_layers) or 1, len(entries) or 1)
  _require(not m.scan_layers or m.n_layers % period == 0,
           f"config.model.n_layers={m.n_layers} with config.model.scan_layers=true: the per-layer "
           f"patterns (position_layers, attention_layers) repeat every {period} layers, which "
           "must divide n_layers; or set scan_layers=false")
  return ("window" if m.window else "chunk") if local else ""


def _with_kv_heads_rule(rules) -> tuple:
  """Rules that map the key/value heads as the query heads where they do not say otherwise (rules
  written before grouped-query attention, or that leave it implicit)."""
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in rules)
  pairs = {r[0]: r[1] for r in rules if isinstance(r, tuple) and len(r) == 2}
  if "kv_heads" in pairs or "heads" not in pairs:
    return rules
  return (*rules, ("kv_heads", pairs["heads"]))


def _with_length_rule(rules) -> tuple:
  """Rules that shard a sequence's length over the context axis where they do not say otherwise
  (rules written before context parallelism)."""
  if any(isinstance(r, (tuple, list)) and r and r[0] == "length" for r in rules):
    return tuple(rules)
  return (*rules, ("length", "context"))


def _maps_to(rules, logical: str, mesh_axis: str) -> bool:
  axes = next((r[1] for r in rules if r[0] == logical), None)
  return axes == mesh_axis or (isinstance(axes, (tuple, list)) and mesh_axis in axes)


def _check_rules(rules) -> None:
  """Each of config.mesh.rules is (logical axis, mesh axes: one name, several, or None), and
  names only axes the mesh has (JAX's own refusal comes at the first array, in its terms)."""
  for entry in rules:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
      raise ConfigError(f"config.mesh.rules: the entry {entry!r} is not (logical axis name, mesh "
                        f"axes); e.g. ('embed', 'fsdp'), ('batch', ('data', 'fsdp')), ('mlp', None)")
    axes = entry[1]
    named = () if axes is None else (axes,) if isinstance(axes, str) else axes
    unknown = [a for a in named if a not in MESH_AXES]
    if not isinstance(named, (tuple, list)) or unknown:
      raise ConfigError(f"config.mesh.rules: the entry {tuple(entry)!r} names "
                        f"{unknown[0] if unknown else axes!r}, which is not an axis of the mesh; "
                        f"its axes: {', '.join(MESH_AXES)} (or None: not sharded)")


def resolve(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
  """A validated copy with derived fields filled in: head_dim, max_len, vocab_size, mesh sizes."""
  c = fill_missing(config)
  m, d, t = c.model, c.data, c.train
  _require(isinstance(c.seed, int) and not isinstance(c.seed, bool) and 0 <= c.seed < 2 ** 32,
           f"config.seed={c.seed!r} must be an integer in [0, 2^32)")
  _choice(c, "resume_changes", ("refuse", "allow"))
  for name in ("model.d_model", "model.n_layers", "model.n_heads", "model.mlp_dim",
               "model.vocab_multiple", "data.seq_len", "data.batch_size", "train.steps",
               "train.log_every", "train.grad_accum_steps", "checkpoint.every_steps",
               "checkpoint.keep"):
    _positive(c, name)
  _choice(c, "model.position", positions.available())
  pattern = _position_layers(m)
  _choice(c, "model.memory", memory.available())
  _choice(c, "model.mlp", ("swiglu", "gelu"))
  _choice(c, "model.attention", attention.CHOICES)
  _choice(c, "model.remat", tuple(REMAT_POLICIES))
  _positive(c, "model.attention_block")
  local = _local_layers(m)
  _require(not (c.data.pose_target_len and local and attention.masks_local_by_index(m.attention)),
           f"config.model.attention={m.attention!r} masks local layers by token index, and "
           "config.data.pose_target_len skips positions; use auto, blockwise or pallas (they mask "
           "by position)")
  try:  # a kernel for another backend or that cannot take a scheme's bias (nothing is built)
    for name in pattern:
      attention.check(m.attention, bias=positions.bias_kind(name), local=local)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _choice(c, "model.param_dtype", DTYPES)
  _choice(c, "model.compute_dtype", DTYPES)
  tokenizer = _tokenizer(d)
  _choice(c, "train.schedule", SCHEDULES)
  _choice(c, "wandb.mode", WANDB_MODES)
  _require(isinstance(c.wandb.init_timeout_s, (int, float)) and c.wandb.init_timeout_s > 0,
           f"config.wandb.init_timeout_s={c.wandb.init_timeout_s!r} must be a positive number of "
           "seconds")
  for name in _option_types():  # a length option left 0 means the training length
    if m[name].get("original_length") == 0:
      m[name].original_length = d.seq_len
  _require(t.learning_rate > 0, f"config.train.learning_rate={t.learning_rate!r} must be positive")
  _require(t.warmup_steps >= 0, f"config.train.warmup_steps={t.warmup_steps!r} must be >= 0")
  _require(0 <= t.min_lr_ratio <= 1, f"config.train.min_lr_ratio={t.min_lr_ratio!r} must be in [0, 1]")
  _require(t.grad_clip >= 0, f"config.train.grad_clip={t.grad_clip!r} must be >= 0 (0 turns it off)")
  _require(t.position_lr_scale > 0, f"config.train.position_lr_scale={t.position_lr_scale!r} "
           "must be positive (1: the model's learning rate)")

  if m.head_dim == 0:
    _require(m.d_model % m.n_heads == 0,
             f"config.model.n_heads={m.n_heads} must divide config.model.d_model={m.d_model} "
             f"(allowed: {', '.join(str(h) for h in range(1, m.d_model + 1) if m.d_model % h == 0)}), "
             "or set config.model.head_dim")
    m.head_dim = m.d_model // m.n_heads
  _positive(c, "model.head_dim")
  if m.n_kv_heads == 0:
    m.n_kv_heads = m.n_heads
  _require(m.n_kv_heads > 0 and m.n_heads % m.n_kv_heads == 0,
           f"config.model.n_kv_heads={m.n_kv_heads} must divide config.model.n_heads={m.n_heads} "
           f"(allowed: {', '.join(str(g) for g in range(1, m.n_heads + 1) if m.n_heads % g == 0)}; "
           "0: n_heads)")
  _require(isinstance(d.pose_target_len, int) and (d.pose_target_len == 0 or
                                                    d.pose_target_len > d.seq_len),
           f"config.data.pose_target_len={d.pose_target_len!r} must exceed config.data.seq_len="
           f"{d.seq_len} (PoSE stretches the positions to it), or be 0 (off)")
  # the longest position training sees: PoSE's target length where it is on
  position_span = max(d.seq_len, d.pose_target_len)
  for name in ("window", "chunk"):
    _require(m[name] <= position_span,
             f"config.model.{name}={m[name]} is longer than the {position_span} positions a training "
             f"row spans: its local layers would attend to everything; use 1..{position_span}, or 0 "
             "(off)")
  if m.max_len == 0:
    m.max_len = position_span
  tokenizer_vocab = tokenizer.vocab_size
  if m.vocab_size == 0:
    m.vocab_size = math.ceil(tokenizer_vocab / m.vocab_multiple) * m.vocab_multiple
  _require(m.vocab_size >= tokenizer_vocab,
           f"config.model.vocab_size={m.vocab_size} is smaller than the {d.tokenizer} tokenizer's "
           f"{tokenizer_vocab}; use 0 or at least {tokenizer_vocab}")
  try:  # the position scheme and the memory mechanism check their own options
    positions.check_options(pattern, _sections(m, positions.option_types()))
    memory.check_options(m.memory, _sections(m, memory.option_types()))
    if m.temperature.kind in ("logn", "drope") and m.temperature.length == 0:
      m.temperature.length = d.seq_len
    model = model_config(c)
    model.temperature.check()
    _require(set(model.temperature.schemes) <= set(pattern),
             f"config.model.temperature.schemes={model.temperature.schemes!r} names a scheme no "
             f"layer has; the layers' schemes: {', '.join(dict.fromkeys(pattern))}")
    for name, options in model.layer_positions():
      positions.validate(name, model.position_config(options), position_span)
    memory.validate(m.memory, model_config(c).memory_config(), d.seq_len)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(not m.memory_reset or m.segment_len > 0,
           "config.model.memory_reset=true wipes the memory between segments, and this model has "
           "none: set config.model.segment_len (and config.model.memory)")
  _require(c.eval.every_steps >= 0,
           f"config.eval.every_steps={c.eval.every_steps!r} must be >= 0 (0 turns it off)")
  _require(len(c.eval.multiples) > 0 and all(m > 0 for m in c.eval.multiples),
           f"config.eval.multiples={tuple(c.eval.multiples)!r} must be positive numbers")
  _require(c.eval.probe_trials >= 0,
           f"config.eval.probe_trials={c.eval.probe_trials!r} must be >= 0 (0 turns the probe off)")
  if c.eval.probe_trials and (problem := retrieval.choice_problem(c.eval.probe_tasks,
                                                                  retrieval.ALL_TASKS)):
    raise ConfigError(f"config.eval.probe_tasks={tuple(c.eval.probe_tasks)!r}: {problem}")
  _require(not c.get("finetune_changes") or (c.init_from and not c.init_optimizer),
           f"config.finetune_changes={tuple(c.get('finetune_changes', ()))!r} changes the model "
           "of a fine-tune: it needs config.init_from, and config.init_optimizer=false (the "
           "source's AdamW moments do not fit another model)")
  if c.wandb.job_type == "finetune":
    _require(bool(c.init_from), "config.init_from is empty; a fine-tune needs the run directory "
             "whose parameters it starts from")
  try:
    mixture.check(mixture_config(c), tokenizer, d.seq_len)
    retrieval_params(c)
  except ValueError as e:
    raise ConfigError(f"config.{e}" if str(e).startswith("data.") else
                      f"config.data.{e}") from None
  if d.name == "text_dir":
    _require(bool(d.text_dir), "config.data.text_dir is empty; data.name='text_dir' needs a folder")

  try:
    shape = resolve_mesh_shape(c.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check_rules(c.mesh.rules)
  c.mesh.data, c.mesh.fsdp, c.mesh.context, c.mesh.tensor = shape
  exchanges = attention.CONTEXT_EXCHANGES
  _require(c.mesh.context_exchange in exchanges,
           f"config.mesh.context_exchange={c.mesh.context_exchange!r} is not one of "
           f"{', '.join(exchanges)}")
  if c.mesh.context > 1:
    _check_context(c)
  batch_shards = c.mesh.data * c.mesh.fsdp
  per_step = batch_shards * t.grad_accum_steps
  _require(d.batch_size % per_step == 0,
           f"config.data.batch_size={d.batch_size} must be a multiple of mesh.data x mesh.fsdp x "
           f"train.grad_accum_steps = {per_step}")
  for name, size in (("n_heads", m.n_heads), ("mlp_dim", m.mlp_dim), ("vocab_size", m.vocab_size)):
    _require(size % c.mesh.tensor == 0,
             f"config.model.{name}={size} must be divisible by config.mesh.tensor={c.mesh.tensor}")
  if _maps_to(c.mesh.rules, "kv_heads", "tensor"):
    _require(m.n_kv_heads % c.mesh.tensor == 0,
             f"config.model.n_kv_heads={m.n_kv_heads} must be divisible by config.mesh.tensor="
             f"{c.mesh.tensor}, or add ('kv_heads', None) to config.mesh.rules to keep the "
             "key/value heads whole on every device")
  _require(m.d_model % c.mesh.fsdp == 0,
           f"config.model.d_model={m.d_model} must be divisible by config.mesh.fsdp={c.mesh.fsdp}")
  c.lock()
  return c


def _check_context(c) -> None:
  """What context parallelism (mesh.context > 1) takes: the load-balanced order's 2C chunks,
  sequences it can shard, and kernels that take a query offset into gathered keys."""
  C, m = c.mesh.context, c.model
  _require(_maps_to(c.mesh.rules, "length", "context"),
           f"config.mesh.context={C} needs ('length', 'context') in config.mesh.rules")
  _require(c.data.seq_len % (2 * C) == 0,
           f"config.data.seq_len={c.data.seq_len} must be a multiple of 2 x mesh.context = {2 * C} "
           "(each device holds two equal chunks of every sequence)")
  _require(m.memory == "none",
           f"config.model.memory={m.memory!r} with mesh.context={C}: a memory mechanism carries "
           "its state from segment to segment, which a sequence sharded over devices does not "
           "have in order; set mesh.context=1 (a memory run's segments are short) or "
           "model.memory='none'")
  if c.mesh.context_exchange == "ring":
    _require(m.attention in ("auto", "blockwise"),
             f"config.model.attention={m.attention!r} with mesh.context_exchange='ring': the ring "
             "runs blockwise attention's tiles; allowed: auto, blockwise (or context_exchange="
             "'gather', which takes " + ", ".join(attention.OFFSET_TAKERS) + ")")
  allowed = attention.OFFSET_TAKERS
  _require(m.attention in ("auto", *allowed),
           f"config.model.attention={m.attention!r} with mesh.context={C}: context parallelism "
           f"runs a kernel that takes queries at an offset into the gathered keys; allowed: "
           f"auto, {', '.join(allowed)}")


def _defaults(cls, *, skip=()) -> dict:
  """The fields of a config dataclass that have a default, with it."""
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING and f.name not in skip}


def _typed(cls, node: ml_collections.ConfigDict, *, skip=()) -> dict:
  """The fields of `cls` read from a config node, cast to their defaults' types (a JSON or command
  line 4 for a float field becomes 4.0)."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    value = node[f.name]
    if isinstance(f.default, tuple):  # a list once saved as JSON
      value = tuple(value)
    for kind in (bool, int, float, str):  # bool before int: True is an int too
      if isinstance(f.default, kind):
        value = kind(value)
        break
    out[f.name] = value
  return out


def _sections(m: ml_collections.ConfigDict, option_types: dict[str, type]) -> dict[str, object]:
  """model.<name> of each of `option_types` as its Options."""
  return {name: options(**_typed(options, m[name])) for name, options in option_types.items()}


# ModelConfig fields the config holds as sections of their own (model.<scheme>, model.<memory
# mechanism>: the chosen ones' become these).
_OPTIONS_FIELDS = ("position_options", "memory_options", "position_pattern", "temperature")
# ModelConfig's fields that the config keeps outside config.model: config.mesh's
_NOT_MODEL_FIELDS = _OPTIONS_FIELDS + ("context_exchange",)


def model_defaults() -> ml_collections.ConfigDict:
  """config.model with its defaults from the model's dataclasses (ModelConfig and each position
  scheme's and memory mechanism's Options), the one place they live, plus the fields only the
  config has: head_dim, max_len and vocab_size 0 (derived at resolution: d_model // n_heads,
  data.seq_len, the tokenizer's vocabulary padded to a multiple of vocab_multiple)."""
  c = ml_collections.ConfigDict(_defaults(ModelConfig, skip=_NOT_MODEL_FIELDS))
  c.update(head_dim=0, max_len=0, vocab_size=0, vocab_multiple=64)
  # A per-layer pattern of schemes, repeated over the layers: e.g. ('rope',)*3 + ('none',);
  # entries may set their scheme's options ('rope:base=1000000'). Empty: every layer
  # model.position (which becomes the pattern's first scheme when a pattern is given).
  c.position_layers = ()
  # Attention temperature (lcx.model.temperature): kind none, logn, llama4, ssmax, fixed or
  # drope, its parameters, and the schemes of the layers it applies to (() every layer).
  c.temperature = ml_collections.ConfigDict(dataclasses.asdict(TemperatureOptions()))
  # model.rope, model.t5, model.xl, ...: each scheme's and each memory mechanism's own options
  for name, options in _option_types().items():
    c[name] = ml_collections.ConfigDict(dataclasses.asdict(options()))
  return c


def optimizer_defaults() -> dict:
  """config.train's optimizer fields with their defaults (OptimizerConfig's)."""
  return _defaults(OptimizerConfig)


def optimizer_config(c: ml_collections.ConfigDict) -> OptimizerConfig:
  return OptimizerConfig(**_typed(OptimizerConfig, c.train))


def retrieval_params(c: ml_collections.ConfigDict) -> retrieval.TaskParams:
  r = c.data.retrieval
  return retrieval.TaskParams(num_keys=r.num_keys, num_values=r.num_values,
                              num_queries=r.num_queries, num_hops=r.num_hops,
                              story_facts=r.story_facts)


def mixture_config(c: ml_collections.ConfigDict) -> mixture.MixtureConfig:
  r = c.data.retrieval
  return mixture.MixtureConfig(fraction=float(r.fraction), answer_weight=float(r.answer_weight),
                               tasks=tuple(r.tasks), styles=tuple(r.styles),
                               params=retrieval_params(c))


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
  """The model's dataclass from a resolved config."""
  m = c.model
  return ModelConfig(
      **_typed(ModelConfig, m, skip=_NOT_MODEL_FIELDS),
      context_exchange=str((c.get("mesh") or {}).get("context_exchange",
                                                       ModelConfig.context_exchange)),
      position_options=_sections(m, positions.option_types()).get(m.position),
      memory_options=_sections(m, memory.option_types()).get(m.memory),
      position_pattern=position_pattern(m),
      temperature=TemperatureOptions(**{**_typed(TemperatureOptions, m.temperature),
                                        "schemes": tuple(m.temperature.schemes)}))


def position_pattern(m: ml_collections.ConfigDict) -> tuple:
  """model.position_layers as (scheme, options) per entry; () without a pattern."""
  sections = _sections(m, positions.option_types())
  return tuple(positions.parse_layer(entry, sections) for entry in m.get("position_layers", ()))


def inherit_architecture(config: ml_collections.ConfigDict,
                         source: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config with the model and tokenizer of the run it fine-tunes (`source`, its saved config).

  The fine-tune keeps its own attention implementation and the options a scheme lists in its
  Options' FINETUNE_OWN (RoPE's context extension); an unset original_length becomes the
  source's, so scaling is relative to the pretraining length.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  own = {name: {field: out.model[name][field] for field in getattr(options, "FINETUNE_OWN", ())}
         for name, options in _option_types().items()}
  attention = out.model.attention
  changes = {}
  for field in out.get("finetune_changes", ()):
    if field not in out.model or field in _option_types():
      raise ConfigError(f"config.finetune_changes names {field!r}, which is not a field of "
                        "config.model a fine-tune can set (e.g. position, position_layers, "
                        "qk_norm, temperature)")
    changes[field] = out.model[field]
  out.model = ml_collections.ConfigDict(fill_missing(source).model.to_dict())
  out.model.attention = attention
  for field, value in changes.items():
    out.model[field] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  if changes.keys() & {"position", "position_layers"}:
    # the sections of schemes the model no longer uses go back to the fine-tune's own (their
    # scheme-only fields would be refused, doing nothing)
    used = {out.model.position} | {str(e).partition(":")[0].strip()
                                   for e in out.model.get("position_layers", ())}
    for name in set(positions.option_types()) - used:
      out.model[name] = config.model[name].to_dict()
  for name, fields in own.items():
    if fields.get("original_length") == 0:
      fields["original_length"] = out.model[name].original_length or source.data.seq_len
    out.model[name].update(fields)
  if out.data.tokenizer not in ("", source.data.tokenizer):  # named, and not the source's
    raise ConfigError(f"config.data.tokenizer={out.data.tokenizer!r}: a fine-tune keeps the "
                      f"tokenizer of the run it starts from ({source.data.tokenizer!r}); "
                      "leave data.tokenizer unset (\"\")")
  # The source's model file, which must still hash as it did (checked at resolution).
  out.data.tokenizer = source.data.tokenizer
  out.data.tokenizer_sha256 = source.data.get("tokenizer_sha256", "")
  return out
