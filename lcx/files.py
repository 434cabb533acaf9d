"""Files that are never seen half-written, and write errors that name their file."""
import contextlib
import os
import pathlib


@contextlib.contextmanager
def naming(path):
  """An OSError raised inside that names no file gets `path` as its file: a write, flush or close
  on an open file (a full disk, a lost mount) raises one without a name, and the one line a
  command prints must say which file it was."""
  try:
    yield
  except OSError as e:
    if e.filename is not None:
      raise
    raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def write_atomic(path, text: str) -> None:
  """Writes text to a temporary file beside path and renames it over path: a reader (or a crash)
  sees the old file or the new one, never a part."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with naming(path):  # the file meant, not its temporary name
      tmp.write_text(text)
  except OSError:
    tmp.unlink(missing_ok=True)
    raise
  os.replace(tmp, path)
