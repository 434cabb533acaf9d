"""The Llama family in Hugging Face's terms, and how it maps onto lcx's model.

One architecture record (`Llama`) and one tensor naming (HF's, `model.layers.N.self_attn.q_proj.
weight`, weights [out, in], RoPE in the half-split layout) sit between every source and lcx: the
GGUF reader translates into them, the HF reader reads them as they are, and the exporter writes
them back. lcx's own layout differs only by transposes and head reshapes, so a round trip is
bit-exact.
"""
import dataclasses

import numpy as np

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# HF's rope_type <-> model.rope.scaling (HF calls dynamic NTK "dynamic"; "default" is none).
HF_SCALINGS = {"default": "none", "linear": "linear", "dynamic": "dynamic_ntk", "yarn": "yarn",
               "longrope": "longrope"}


class Unsupported(ValueError):
  """A source field lcx cannot represent: one line naming it."""


@dataclasses.dataclass(frozen=True)
class Llama:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  norm_eps: float
  rope_base: float
  context: int  # the context it was trained to (HF's max_position_embeddings)
  tie_embeddings: bool
  # model.rope's context extension, as lcx names it: scaling, factor, original_length, ...
  rope_scaling: dict = dataclasses.field(default_factory=dict)

  def model_fields(self) -> dict:
    """config.model's fields for this architecture."""
    return dict(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                mlp_dim=self.mlp_dim, mlp="swiglu", norm_eps=self.norm_eps,
                tie_embeddings=self.tie_embeddings, tied_logit_scale=1.0, position="rope")

  def rope_fields(self) -> dict:
    """config.model.rope's fields."""
    return dict(base=self.rope_base, fraction=1.0, layout="half", **self.rope_scaling)


def from_hf_config(cfg: dict, where: str) -> Llama:
  """The architecture of an HF config.json (transformers 4's rope_theta / rope_scaling or 5's
  rope_parameters); anything lcx's model would compute differently is refused, named."""
  architectures = cfg.get("architectures") or [f"model_type {cfg.get('model_type')!r}"]
  if architectures[0] not in ARCHITECTURES:
    raise Unsupported(f"{where}: the architecture {architectures[0]} is not supported; "
                      f"supported: {', '.join(ARCHITECTURES)}")
  refused = [(f"hidden_act={cfg.get('hidden_act')!r}", cfg.get("hidden_act", "silu") != "silu"),
             ("attention_bias=true", bool(cfg.get("attention_bias"))),
             ("mlp_bias=true", bool(cfg.get("mlp_bias"))),
             (f"sliding_window={cfg.get('sliding_window')} (lcx has no windowed attention yet)",
              bool(cfg.get("sliding_window")) and cfg.get("sliding_window") < cfg.get(
                  "max_position_embeddings", 0)),
             (f"pretraining_tp={cfg.get('pretraining_tp')}", cfg.get("pretraining_tp", 1) != 1)]
  for what, bad in refused:
    if bad:
      raise Unsupported(f"{where}: {what} is not something lcx's Llama computes")
  rope = dict(cfg.get("rope_parameters") or {})
  scaling = dict(cfg.get("rope_scaling") or {})
  rope.update({k: v for k, v in scaling.items() if v is not None})
  if "original_max_position_embeddings" in cfg:  # Phi-3 keeps LongRoPE's at the top level
    rope.setdefault("original_max_position_embeddings", cfg["original_max_position_embeddings"])
  base = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
  if rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) != 1.0:
    raise Unsupported(f"{where}: partial_rotary_factor is not supported for Llama models")
  heads = cfg["num_attention_heads"]
  context = cfg.get("max_position_embeddings", 2048)
  lcx_scaling = _scaling_from_hf(rope, context, where)
  return Llama(vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
               n_layers=cfg["num_hidden_layers"], n_heads=heads,
               n_kv_heads=cfg.get("num_key_value_heads") or heads,
               head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
               mlp_dim=cfg["intermediate_size"], norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
               rope_base=float(base), context=int(context),
               tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
               rope_scaling=lcx_scaling)


def _scaling_from_hf(rope: dict, context: int, where: str) -> dict:
  """model.rope's scaling fields from HF's rope parameters."""
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind not in HF_SCALINGS:
    raise Unsupported(f"{where}: rope_type={kind!r} is not a scaling lcx has; supported: "
                      f"{', '.join(HF_SCALINGS)}")
  if kind == "default":
    return {}
  if kind == "longrope":  # HF's factor defaults to the ratio of the two lengths
    original = int(rope["original_max_position_embeddings"])
    return dict(scaling="longrope", factor=float(rope.get("factor") or context / original),
                original_length=original,
                short_factor=tuple(map(float, rope.get("short_factor") or ())),
                long_factor=tuple(map(float, rope["long_factor"])),
                attention_factor=float(rope.get("attention_factor") or 0.0))
  factor = float(rope["factor"])
  if kind == "dynamic":  # HF grows from max_position_embeddings, the trained length
    return dict(scaling="dynamic_ntk", factor=factor, original_length=context)
  original = int(rope.get("original_max_position_embeddings") or context / factor)
  out = dict(scaling=HF_SCALINGS[kind], factor=factor, original_length=original)
  if kind == "yarn":
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
      if rope.get(key) not in (None, 0, 1, 1.0):  # defaults: 0.1 ln(s) + 1, as lcx computes
        raise Unsupported(f"{where}: YaRN's {key}={rope[key]} is not supported (lcx uses the "
                          "paper's 0.1 ln(s) + 1)")
    if rope.get("truncate") is False:
      raise Unsupported(f"{where}: YaRN's truncate=false is not supported (lcx's ramp is "
                        "truncated, as the reference code's)")
    out.update(beta_fast=float(rope.get("beta_fast") or 32.0),
               beta_slow=float(rope.get("beta_slow") or 1.0), yarn_ramp="dims")
  return out


def to_hf_config(arch: Llama, architecture: str = "LlamaForCausalLM") -> dict:
  """An HF config.json for the architecture (transformers 4's keys, which 5 reads too)."""
  cfg = dict(architectures=[architecture], model_type="llama", vocab_size=arch.vocab_size,
             hidden_size=arch.d_model, intermediate_size=arch.mlp_dim,
             num_hidden_layers=arch.n_layers, num_attention_heads=arch.n_heads,
             num_key_value_heads=arch.n_kv_heads, head_dim=arch.head_dim, hidden_act="silu",
             max_position_embeddings=arch.context, rms_norm_eps=arch.norm_eps,
             rope_theta=arch.rope_base, tie_word_embeddings=arch.tie_embeddings,
             attention_bias=False, mlp_bias=False, torch_dtype="float32")
  scaling = arch.rope_scaling.get("scaling", "none")
  if scaling != "none":
    hf_name = {v: k for k, v in HF_SCALINGS.items()}[scaling]
    s = arch.rope_scaling
    rope = {"rope_type": hf_name, "factor": s["factor"]}
    if scaling == "dynamic_ntk":  # HF reads the trained length from max_position_embeddings
      cfg["max_position_embeddings"] = s["original_length"]
    else:
      rope["original_max_position_embeddings"] = s["original_length"]
      cfg["max_position_embeddings"] = int(s["original_length"] * s["factor"])
    if scaling == "yarn":
      rope.update(beta_fast=s["beta_fast"], beta_slow=s["beta_slow"])
    if scaling == "longrope":
      pairs = arch.head_dim // 2
      rope.update(short_factor=list(s["short_factor"] or (1.0,) * pairs),
                  long_factor=list(s["long_factor"]))
      if s["attention_factor"]:
        rope["attention_factor"] = s["attention_factor"]
    cfg["rope_scaling"] = rope
  return cfg


# lcx parameter -> (HF tensor name, how lcx's array is made from HF's [out, in] weight).
def _layer_names(i: int) -> dict:
  p = f"model.layers.{i}."
  return {f"blocks/{i}/attn/wq": p + "self_attn.q_proj.weight",
          f"blocks/{i}/attn/wk": p + "self_attn.k_proj.weight",
          f"blocks/{i}/attn/wv": p + "self_attn.v_proj.weight",
          f"blocks/{i}/attn/wo": p + "self_attn.o_proj.weight",
          f"blocks/{i}/mlp/w_gate": p + "mlp.gate_proj.weight",
          f"blocks/{i}/mlp/w_up": p + "mlp.up_proj.weight",
          f"blocks/{i}/mlp/w_down": p + "mlp.down_proj.weight",
          f"blocks/{i}/attn_norm/scale": p + "input_layernorm.weight",
          f"blocks/{i}/mlp_norm/scale": p + "post_attention_layernorm.weight"}


def tensor_names(arch: Llama) -> dict[str, str]:
  """lcx parameter path -> HF tensor name, for every parameter of the model."""
  names = {"embedding": "model.embed_tokens.weight", "final_norm/scale": "model.norm.weight"}
  if not arch.tie_embeddings:
    names["head"] = "lm_head.weight"
  for i in range(arch.n_layers):
    names.update(_layer_names(i))
  return names


def hf_shapes(arch: Llama) -> dict[str, tuple]:
  """HF tensor name -> the shape a checkpoint of this architecture holds."""
  D, H, G, K, F, V = (arch.d_model, arch.n_heads, arch.n_kv_heads, arch.head_dim, arch.mlp_dim,
                      arch.vocab_size)
  by_suffix = {"q_proj.weight": (H * K, D), "k_proj.weight": (G * K, D),
               "v_proj.weight": (G * K, D), "o_proj.weight": (D, H * K),
               "gate_proj.weight": (F, D), "up_proj.weight": (F, D), "down_proj.weight": (D, F),
               "layernorm.weight": (D,), "embed_tokens.weight": (V, D), "lm_head.weight": (V, D),
               "model.norm.weight": (D,)}
  return {name: next(s for suffix, s in by_suffix.items() if name.endswith(suffix))
          for name in tensor_names(arch).values()}


def to_lcx(arch: Llama, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """lcx parameter path -> array, from HF tensors (which must be exactly the model's)."""
  H, G, K, D = arch.n_heads, arch.n_kv_heads, arch.head_dim, arch.d_model
  out = {}
  for path, name in tensor_names(arch).items():
    w = hf[name]
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "wq":
      w = w.T.reshape(D, H, K)
    elif leaf in ("wk", "wv"):
      w = w.T.reshape(D, G, K)
    elif leaf == "wo":
      w = w.T.reshape(H, K, D)
    elif leaf in ("w_gate", "w_up", "w_down", "head"):
      w = w.T
    out[path] = np.ascontiguousarray(w)
  return out


def from_lcx(arch: Llama, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF tensor name -> array, from lcx parameters (the inverse of to_lcx)."""
  out = {}
  for path, name in tensor_names(arch).items():
    w = params[path]
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("wq", "wk", "wv"):
      w = w.reshape(w.shape[0], -1).T
    elif leaf == "wo":
      w = w.reshape(-1, w.shape[-1]).T
    elif leaf in ("w_gate", "w_up", "w_down", "head"):
      w = w.T
    out[name] = np.ascontiguousarray(w)
  return out


def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """The inverse of llama.cpp's permutation of q/k rows: per head, rows (2j, 2j + 1) of the
  interleaved layout go back to (j, j + K/2) of the half-split one."""
  rows = w.shape[0]
  return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
