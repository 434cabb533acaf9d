"""Files that are never seen half-written."""
import os
import pathlib


def write_atomic(path, text: str) -> None:
  """Writes text to a temporary file beside path and renames it over path: a reader (or a crash)
  sees the old file or the new one, never a part."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(text)
  except OSError as e:  # a full disk: the write's error names no file; name the one meant
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from None
  os.replace(tmp, path)
