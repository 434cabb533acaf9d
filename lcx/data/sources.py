"""Open a split of a text dataset as a random-access source of documents, building it if needed."""
import contextlib
import fcntl
import os
import pathlib
import shutil

import tensorflow_datasets as tfds

from lcx.data import corpora
from lcx.files import naming


LOCAL = ("pystdlib", "text_dir", "jsonl")  # built from files on this machine, on first use


def resolved(data_dir: str) -> pathlib.Path:
  return pathlib.Path(os.path.expanduser(data_dir)).resolve()


def _builder(name: str, data_dir: str, text_dir: str, text_glob: str, text_key: str = "text"):
  kwargs = dict(data_dir=data_dir, file_format="array_record")
  if name == "pystdlib":
    return corpora.Pystdlib(**kwargs)
  if name in ("text_dir", "jsonl") and not text_dir:
    raise ValueError(f"data.name={name!r} needs data.text_dir, a directory of "
                     f"{'text' if name == 'text_dir' else 'JSON-lines'} files")
  if name == "text_dir":
    return corpora.TextDir(config=corpora.text_dir_config(text_dir, text_glob), **kwargs)
  if name == "jsonl":
    glob = "**/*.jsonl" if text_glob == "**/*" else text_glob  # the default: every .jsonl file
    return corpora.JsonLines(config=corpora.jsonl_config(text_dir, glob, text_key), **kwargs)
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={name!r} is neither a bundled corpus (pystdlib, text_dir) nor a "
                     f"TFDS dataset: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def _build_lock(data_dir: str):
  pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
  with open(pathlib.Path(data_dir) / ".lcx-build.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def build(builder) -> None:
  """Builds (or downloads) a TFDS dataset once for the processes sharing its data_dir, first
  removing what a killed build left: TFDS writes into incomplete.<random>_<version>/ beside the
  version folder and renames it when done, and never looks at one again. Under the lock no build
  of this dataset is running, so any such folder is abandoned."""
  with _build_lock(str(builder.data_dir_root)):
    for abandoned in pathlib.Path(builder.data_path).parent.glob("incomplete.*"):
      shutil.rmtree(abandoned, ignore_errors=True)
    with naming(builder.data_path):  # a full disk's error names no file
      builder.download_and_prepare()


class Documents:
  """The documents of one split: len() and [i] -> the text as bytes."""

  def __init__(self, name: str, split: str, *, data_dir: str, text_dir: str = "",
               text_glob: str = "**/*", text_key: str = "text"):
    data_dir = str(resolved(data_dir))
    if name in LOCAL:
      # Built on first use; later calls find it prepared and return at once. The lock makes
      # processes that share data_dir (several JAX processes on a host) build it once.
      build(_builder(name, data_dir, text_dir, text_glob, text_key))
    builder = _builder(name, data_dir, text_dir, text_glob, text_key)  # the prepared dataset
    if name not in LOCAL and not builder.is_prepared():  # downloading is lcx.data.prepare's
      raise ValueError(
          f"data.name={name!r} is not prepared in data.data_dir={data_dir!r}; prepare it once with "
          f"`python -m lcx.data.prepare --config ... --config.data.name={name}`")
    if split not in builder.info.splits:
      raise ValueError(f"split {split!r} does not exist for {name}; it has "
                       f"{', '.join(builder.info.splits)}")
    features = builder.info.features
    if text_key not in features:
      raise ValueError(f"data.text_key={text_key!r} is not a feature of {name}; it has "
                       f"{', '.join(features)}")
    self.name = builder.info.full_name
    self.split = split
    self.data_dir = data_dir  # resolved: where this split's token cache lives by default
    self.text_key = text_key
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    text = self._source[int(index)][self.text_key]
    return text.encode("utf-8") if isinstance(text, str) else text
