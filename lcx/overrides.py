"""Configs from the command line: `--config FILE.py:ARG` and `--config.a.b=value` overrides.

Every entry point (training, evaluation) takes the overrides out of its arguments before absl
parses them and applies them here, converting each value to the type of the field it replaces,
so that every mistake (a file that does not exist, an unknown preset or field, a value of the
wrong type) is one line naming it.
"""
import ast
import importlib.util
import pathlib
import traceback

import ml_collections

PREFIX = "--config."


def load_module(path: str, what: str, function: str):
  """The Python file at path as a module, which must define `function`; one ValueError line for
  a missing file, a file that does not run, or a missing function."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ValueError(f"{what} {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"lcx_{what.replace(' ', '_')}_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"{what} {path}:{e.lineno}: {e.msg}") from None
  except Exception as e:  # the file raised while it was imported
    line = traceback.extract_tb(e.__traceback__)[-1]
    raise ValueError(f"{what} {path} fails when imported ({type(e).__name__}: {e}, at "
                     f"{line.filename}:{line.lineno})") from None
  if not callable(getattr(module, function, None)):
    raise ValueError(f"{what} {path} defines no {function}(arg) function")
  return module


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """get_config(ARG) of 'FILE.py:ARG' (or get_config() of 'FILE.py'), overrides applied."""
  path, _, arg = spec.partition(":")
  module = load_module(path, "config file", "get_config")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # the presets' own message, e.g. an unknown preset
    raise ValueError(str(e)) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"config file {path}: get_config({arg!r}) returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict")
  return apply(config, list(overrides))


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
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise ValueError(f"config.{path} is a section, not a field; set one of its fields: "
                       f"{', '.join(sorted(node[leaf].keys()))}")
    try:
      node[leaf] = _convert(text, node[leaf])
    except (ValueError, SyntaxError, TypeError) as e:
      raise ValueError(f"config.{path}={text!r}: {e}") from None
  return out
