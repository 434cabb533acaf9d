"""TFDS builders for corpora made from files already on the machine.

  pystdlib  the .py files of the running Python's standard library (no tests, no site-packages)
  text_dir  any directory of text files, selected by a glob
  jsonl     JSON-lines files under a directory (a local copy of proof-pile, a dump of anything):
            one document per line, its text in the field data.text_key

pystdlib splits documents deterministically by a hash of their relative path: about 98% train,
1% validation, 1% test. text_dir does the same except under a folder named for a split (train,
validation/valid/val/dev, test: a corpus's official splits, pg19's for one). jsonl takes the split
from a folder or file name that names one, else a hash of path and line.
All are written as array_record and read with tfds data sources, which need no TensorFlow.
"""
import dataclasses
import hashlib
import json
import re
import os
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")
# the names a folder or file may give its split
_NAMED_SPLITS = [("train", "train"), ("validation", "validation|valid|val|dev"), ("test", "test")]
_FEATURES = {"text": tfds.features.Text(), "path": tfds.features.Text()}
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def split_of(relative_path: str) -> str:
  bucket = int.from_bytes(hashlib.sha256(relative_path.encode("utf-8")).digest()[:8], "big") % 100
  return "train" if bucket < 98 else "validation" if bucket == 98 else "test"


def _is_text(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    return b"\0" not in f.read(8192)


def _examples(files: list[tuple[str, pathlib.Path]], split: str, split_fn):
  for rel, path in files:
    if split_fn(rel) != split:
      continue
    data = path.read_bytes()
    if b"\0" in data:  # binary, not text
      continue
    yield rel, {"text": data.decode("utf-8", errors="replace"), "path": rel}


def _split_generators(files, split_fn=split_of):
  """Generators for the splits that get text files: a small folder may leave validation empty."""
  text = [(rel, path) for rel, path in files if _is_text(path)]
  if not text:
    raise ValueError(f"the {len(files)} files found are all binary (they hold NUL bytes); "
                     "data.text_dir needs text files (data.text_glob selects them)")
  present = {split_fn(rel) for rel, _ in text}
  return {split: _examples(text, split, split_fn) for split in SPLITS if split in present}


def stdlib_files() -> list[tuple[str, pathlib.Path]]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith(".py"):
        path = pathlib.Path(dirpath) / name
        files.append((path.relative_to(root).as_posix(), path))
  return files


class Pystdlib(tfds.core.GeneratorBasedBuilder):
  """Python source of the standard library of the interpreter that builds it."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"py{sys.version_info[0]}.{sys.version_info[1]}")]

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES))

  def _split_generators(self, dl_manager):
    return _split_generators(stdlib_files())

  def _generate_examples(self, examples):
    yield from examples


@dataclasses.dataclass(eq=False)
class TextDirConfig(tfds.core.BuilderConfig):
  root: str = ""
  glob: str = "**/*"


def text_dir_files(root: str, glob: str) -> list[tuple[str, pathlib.Path]]:
  base = pathlib.Path(root).expanduser().resolve()
  if not base.is_dir():
    raise ValueError(f"data.text_dir={root!r} is not a directory")
  files = [(p.relative_to(base).as_posix(), p) for p in sorted(base.glob(glob)) if p.is_file()]
  if not files:
    raise ValueError(f"data.text_dir={root!r} has no files matching data.text_glob={glob!r}")
  return files


def text_dir_config(root: str, glob: str) -> TextDirConfig:
  """A config named by the folder and a fingerprint of its files, so an edited folder rebuilds."""
  files = text_dir_files(root, glob)
  digest = hashlib.sha256()
  for rel, path in files:
    stat = path.stat()
    digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  base = pathlib.Path(root).expanduser().resolve()
  slug = "".join(ch if ch.isalnum() else "_" for ch in base.name)[:40] or "root"
  return TextDirConfig(name=f"{slug}_{digest.hexdigest()[:12]}", root=str(base), glob=glob)


def text_dir_split_of(relative_path: str) -> str:
  """The split of the first folder on the path named for one, else the path's hash."""
  for folder in relative_path.lower().split("/")[:-1]:
    for split, names in _NAMED_SPLITS:
      if folder in names.split("|"):
        return split
  return split_of(relative_path)


class TextDir(tfds.core.GeneratorBasedBuilder):
  """Every text file under a directory; one document per file."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Folders named train, validation (valid, val, dev) or test give "
                            "their split.", "1.0.0": "Splits by a hash of the path."}
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES))

  def _split_generators(self, dl_manager):
    return _split_generators(text_dir_files(self.builder_config.root, self.builder_config.glob),
                             text_dir_split_of)

  def _generate_examples(self, examples):
    yield from examples


@dataclasses.dataclass(eq=False)
class JsonLinesConfig(tfds.core.BuilderConfig):
  root: str = ""
  glob: str = "**/*.jsonl"
  field: str = "text"


def jsonl_split_of(relative_path: str, line: int) -> str:
  """The split a path names (a folder or file called train, valid, test, ...), else hashed."""
  for split, names in _NAMED_SPLITS:
    if re.search(rf"(^|[/._-])({names})([/._-]|$)", relative_path.lower()):
      return split
  return split_of(f"{relative_path}:{line}")


def jsonl_config(root: str, glob: str, field: str) -> JsonLinesConfig:
  """Named by the folder, the field and a fingerprint of its files (an edited folder rebuilds)."""
  base = text_dir_config(root, glob)
  digest = hashlib.sha256(f"{base.name}|{field}".encode()).hexdigest()[:12]
  slug = base.name.rsplit("_", 1)[0]
  return JsonLinesConfig(name=f"{slug}_{digest}", root=base.root, glob=glob, field=field)


class JsonLines(tfds.core.GeneratorBasedBuilder):
  """One document per line of JSON-lines files; its text is the line's `field`."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []

  def _info(self):
    field = self.builder_config.field
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
        {field: tfds.features.Text(), "path": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    files = text_dir_files(self.builder_config.root, self.builder_config.glob)
    present = set()
    for rel, path in files:  # which splits get documents (an empty split is left out)
      with open(path, "rb") as f:
        present |= {jsonl_split_of(rel, i) for i, line in enumerate(f) if line.strip()}
    return {split: self._examples(files, split) for split in SPLITS if split in present}

  def _generate_examples(self, examples):
    yield from examples

  def _examples(self, files, split):
    field = self.builder_config.field
    for rel, path in files:
      with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
          if not line.strip() or jsonl_split_of(rel, i) != split:
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1} is not JSON ({e.msg})") from None
          if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{i + 1} has no text field {field!r} (data.text_key); "
                             f"its fields: {', '.join(record) if isinstance(record, dict) else '-'}")
          yield f"{rel}:{i}", {field: record[field], "path": f"{rel}:{i + 1}"}
