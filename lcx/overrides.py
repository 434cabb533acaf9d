"""`--config.a.b=value` overrides for configs loaded from a run's config.json.

lcx.train gets them from ml_collections' config flags; entry points that start from a saved
config (evaluation, fine-tuning) parse the same syntax here, converting each value to the type of
the field it replaces.
"""
import ast

import ml_collections

PREFIX = "--config."


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the other arguments, the 'a.b=value' overrides) of a command line."""
  rest, overrides = [], []
  for arg in argv:
    (overrides.append(arg[len(PREFIX):]) if arg.startswith(PREFIX) else rest.append(arg))
  return rest, overrides


def _convert(text: str, current):
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, (tuple, list)):
    return tuple(ast.literal_eval(text))
  return text


def apply(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """A copy of config with each 'a.b=value' applied; unknown fields are refused by name."""
  out = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {PREFIX}{item} needs a value: {PREFIX}{item}=VALUE")
    path, text = item.split("=", 1)
    *parents, leaf = path.split(".")
    node = out
    for name in parents:
      if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
        raise ValueError(f"config.{path} does not exist; config.{'.'.join(parents)} is not a "
                         "section of this config")
      node = node[name]
    if leaf not in node:
      raise ValueError(f"config.{path} does not exist; allowed fields there: "
                       f"{', '.join(sorted(node.keys()))}")
    try:
      node[leaf] = _convert(text, node[leaf])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"config.{path}={text!r}: {e}") from None
  return out
