"""Tokenizer, corpora builders and splits, and the packed stream's determinism and sharding."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from lcx.data import corpora
from lcx.data.sources import Documents
from lcx.data.stream import PackedStream
from lcx.data.tokenizers import ByteTokenizer, make_tokenizer
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def train_docs(data_dir):
  return Documents("pystdlib", "train", data_dir=data_dir)


def _stream(docs, **overrides):
  kwargs = dict(seq_len=32, global_batch=8, seed=0)
  kwargs.update(overrides)
  return PackedStream(docs, ByteTokenizer(), **kwargs)


def test_byte_tokenizer_round_trips_unicode():
  tok = make_tokenizer("byte")
  text = "def f(x):\n    return 'π ≈ 3.14'  # ünïcode\n"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(text.encode())
  assert tok.decode(np.append(ids, tok.eos_id)) == text
  assert tok.vocab_size == 258 and tok.eos_id not in ids
  with pytest.raises(ValueError, match="data.tokenizer='bpe' is unknown; allowed: byte"):
    make_tokenizer("bpe")


def test_pystdlib_splits_are_disjoint_and_cover_the_stdlib(data_dir):
  files = corpora.stdlib_files()
  assert files and not any("/test/" in f"/{rel}" or "site-packages" in rel for rel, _ in files)
  paths = {}
  for split in corpora.SPLITS:
    docs = Documents("pystdlib", split, data_dir=data_dir)
    paths[split] = {docs._source[i]["path"].decode() for i in range(len(docs))}
  assert not (paths["train"] & paths["validation"] or paths["train"] & paths["test"]
              or paths["validation"] & paths["test"])
  everything = set().union(*paths.values())
  assert everything == {rel for rel, _ in files}
  assert 0.96 < len(paths["train"]) / len(everything) < 0.995
  assert paths["validation"] and paths["test"]
  # The split is a function of the path alone.
  assert all(corpora.split_of(p) == split for split, ps in paths.items() for p in ps)


def test_text_dir_builds_from_a_folder(tmp_path, data_dir):
  """Every text file once, binary ones skipped; hashed splits, or a split folder's own."""
  folder = tmp_path / "corpus"
  (folder / "sub").mkdir(parents=True)
  texts = {f"sub/doc{i}.txt": f"document number {i}\n" * (i + 1) for i in range(30)}
  for rel, text in texts.items():
    (folder / rel).write_text(text)
  (folder / "image.bin").write_bytes(b"\x00\x01binary")
  splits = {corpora.text_dir_split_of(rel) for rel in texts}
  docs = {split: Documents("text_dir", split, data_dir=data_dir, text_dir=str(folder),
                           text_glob="**/*") for split in splits}
  read = {docs[s]._source[i]["path"].decode(): docs[s][i].decode()
          for s in docs for i in range(len(docs[s]))}
  assert read == texts  # every text file once, the binary one skipped
  # a folder named for a split holds that split (pg19's layout: train/, validation/, test/)
  books = tmp_path / "books"
  for split, named_folder in (("train", "train"), ("validation", "valid"), ("test", "test")):
    (books / named_folder).mkdir(parents=True)
    for i in range(3):
      (books / named_folder / f"{i}.txt").write_text(f"{split} book {i}\n" * 20)
  for split in corpora.SPLITS:
    named = Documents("text_dir", split, data_dir=data_dir, text_dir=str(books))
    assert sorted(named[i].decode().split()[0] for i in range(len(named))) == [split] * 3
  assert corpora.text_dir_split_of("test_helpers.py") == corpora.split_of("test_helpers.py")
  with pytest.raises(ValueError, match="has no files matching data.text_glob='\\*.md'"):
    Documents("text_dir", "train", data_dir=data_dir, text_dir=str(folder), text_glob="*.md")
  with pytest.raises(ValueError, match="is not a directory"):
    Documents("text_dir", "train", data_dir=data_dir, text_dir=str(tmp_path / "missing"))


def test_a_prepared_tfds_dataset_opens_by_name(data_dir, train_docs):
  """The generic path for pg19, c4, ...: a registered builder already prepared in data_dir."""
  by_name = Documents(f"{train_docs.name.rsplit('/', 1)[0]}", "train", data_dir=data_dir)
  assert len(by_name) == len(train_docs) and by_name[3] == train_docs[3]
  with pytest.raises(ValueError, match="data.text_key='book_text' is not a feature .* text"):
    Documents("pystdlib/py3.11", "train", data_dir=data_dir, text_key="book_text")


def test_unprepared_tfds_dataset_says_how_to_prepare(data_dir):
  with pytest.raises(ValueError, match=r"data.name='mnist' is not prepared .*`python -m lcx.data.prepare"):
    Documents("mnist", "train", data_dir=data_dir)


def test_stream_is_deterministic_in_seed_and_step(train_docs):
  a, b = _stream(train_docs), _stream(train_docs)
  for step in (0, 7, 1000):
    for key, value in a.batch(step).items():
      np.testing.assert_array_equal(value, b.batch(step)[key])
  assert not np.array_equal(a.batch(0)["tokens"], a.batch(1)["tokens"])
  assert not np.array_equal(a.batch(0)["tokens"], _stream(train_docs, seed=1).batch(0)["tokens"])
  # Resuming at a step gives the same batches as iterating from the start.
  it = a.iterate(0)
  straight = [next(it) for _ in range(5)]
  resumed = next(a.iterate(3))
  np.testing.assert_array_equal(straight[3]["tokens"], resumed["tokens"])


def test_process_shards_partition_the_global_batch(train_docs):
  whole = _stream(train_docs).batch(4)
  halves = [_stream(train_docs, process_index=p, process_count=2).batch(4) for p in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_examples_are_document_text_with_shifted_targets(train_docs):
  stream = _stream(train_docs, seq_len=64)
  tok = ByteTokenizer()
  corpus = b"".join(b"\n" + train_docs[i] for i in range(len(train_docs)))
  for step in range(3):
    batch = stream.batch(step)
    np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
    assert batch["positions"].max() < 64
    for row in range(8):
      pieces = np.split(batch["tokens"][row], np.flatnonzero(batch["tokens"][row] == tok.eos_id))
      for piece in pieces:
        text = bytes(piece[piece != tok.eos_id].astype(np.uint8))
        assert text in corpus


def test_document_boundaries_restart_positions_and_segments(train_docs):
  stream = _stream(train_docs, seq_len=512)
  tok = ByteTokenizer()
  seen_boundary = False
  for step in range(20):
    batch = stream.batch(step)
    for row in range(8):
      tokens, pos, seg = batch["tokens"][row], batch["positions"][row], batch["segment_ids"][row]
      starts = np.flatnonzero(tokens == tok.eos_id)
      seen_boundary |= len(starts) > 0
      for s in starts:
        assert pos[s] == 0 and (s == 0 or seg[s] == seg[s - 1] + 1)
      steps = np.diff(pos)
      assert np.all((steps == 1) | (pos[1:] == 0))
  assert seen_boundary
  flat = _stream(train_docs, seq_len=256, document_mask=False).batch(0)
  np.testing.assert_array_equal(flat["positions"][0], np.arange(256))
  assert np.all(flat["segment_ids"] == 1)


def test_an_epoch_visits_every_chunk_once(data_dir):
  docs = Documents("pystdlib", "validation", data_dir=data_dir)
  stream = _stream(docs, seq_len=512, global_batch=1)
  n = stream.chunks_per_epoch
  assert 0 < n < 2000
  tokens = [stream.example(i)["tokens"] for i in range(n)]
  total = sum(len(t) for t in tokens)
  assert total == n * 512
  assert stream.example(n)["tokens"].tobytes() != tokens[0].tobytes() or n == 1
  counts = {}
  for t in tokens:
    counts[t.tobytes()] = counts.get(t.tobytes(), 0) + 1
  assert max(counts.values()) == 1


def test_a_dataset_build_that_was_killed_leaves_nothing_behind(data_dir, tmp_path):
  """TFDS builds into incomplete.<random>_<version>/ and renames it when done; a build killed
  half-way leaves that folder, which the next opening of the dataset removes."""
  import shutil
  Documents("pystdlib", "validation", data_dir=data_dir)  # the session's copy, built once
  shutil.copytree(f"{data_dir}/pystdlib", tmp_path / "pystdlib")
  version = next((tmp_path / "pystdlib").glob("*/1.0.0"))
  abandoned = version.parent / "incomplete.K1LLED_1.0.0"
  abandoned.mkdir()
  docs = Documents("pystdlib", "validation", data_dir=str(tmp_path))
  assert len(docs) > 0 and not abandoned.exists() and version.is_dir()


def test_concurrent_processes_build_the_corpus_once(tmp_path):
  """Several processes sharing a data_dir (JAX processes on one host) all get the built corpus."""
  code = ("from lcx.data.sources import Documents; "
          f"print(len(Documents('pystdlib', 'validation', data_dir={str(tmp_path)!r})))")
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(3)]
  results = [p.communicate(timeout=300) for p in procs]
  counts = [out.strip().splitlines()[-1] if out.strip() else err[-500:] for out, err in results]
  assert len(set(counts)) == 1 and int(counts[0]) > 0, counts
  assert len(list(tmp_path.glob("pystdlib/*/1.0.0"))) == 1


def test_the_token_cache_holds_each_documents_tokens_and_survives_an_interrupted_build(
    data_dir, tmp_path):
  """The stream reads documents from a cache built once: each document's ids as encode() gives
  them (bytes stored as uint8), a folder per tokenizer; a build cut short, or a file cut
  short later, is never read."""
  from lcx.data import token_cache
  docs = Documents("pystdlib", "validation", data_dir=data_dir)
  tokenizer = ByteTokenizer()
  cache = token_cache.prepare(docs, tokenizer, tmp_path, progress=False)
  assert len(cache) == len(docs) and cache.meta["dtype"] == "uint8"
  for i in range(len(docs)):
    np.testing.assert_array_equal(cache.tokens(i), tokenizer.encode(docs[i]))
  assert cache.meta["tokens"] == cache.meta["text_bytes"] == int(cache.lengths().sum())
  # a build interrupted before its meta.json was written: rebuilt, not read
  folder = cache.folder
  (folder / "meta.json").unlink()
  (folder / "tokens.bin").write_bytes(b"")
  again = token_cache.prepare(docs, tokenizer, tmp_path, progress=False)
  np.testing.assert_array_equal(again.tokens(0), tokenizer.encode(docs[0]))
  assert not list(tmp_path.glob("*.partial-*"))
  # a tokens file cut short after a finished build (a disk that filled): built again
  with open(folder / "tokens.bin", "r+b") as f:
    f.truncate(cache.meta["tokens"] // 2)
  again = token_cache.prepare(docs, tokenizer, tmp_path, progress=False)
  np.testing.assert_array_equal(again.tokens(len(docs) - 1), tokenizer.encode(docs[len(docs) - 1]))
  # what a build killed half-way left (its temporary folder, named for this host and its
  # process) is removed by the next build on this host; another host's is left alone
  import socket
  dead = _a_dead_pid()
  left = tmp_path / f"{folder.name}.partial-{socket.gethostname()}-{dead}"
  elsewhere = tmp_path / f"{folder.name}.partial-otherhost-{dead}"
  left.mkdir()
  elsewhere.mkdir()
  (folder / "meta.json").unlink()
  token_cache.prepare(docs, tokenizer, tmp_path, progress=False)
  assert not left.exists() and elsewhere.is_dir()
  # the stream's rows are slices of the cached documents, each after its EOS
  stream = _stream(docs, cache_dir=str(tmp_path))
  row = stream.example(0)
  assert set(np.unique(row["tokens"])) <= set(range(256)) | {tokenizer.eos_id}


def _a_dead_pid() -> int:
  child = subprocess.Popen(["true"])
  child.wait()
  return child.pid


def _overwrite_middle(path, size: int) -> None:
  """Random bytes over `size` bytes in the middle of a file, its size unchanged."""
  with open(path, "r+b") as f:
    f.seek(max(path.stat().st_size // 2 - size // 2, 0))
    f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def test_a_damaged_token_cache_is_never_read(train_docs, tmp_path, caplog):
  """Every block of the tokens file has a checksum written at build: a small cache is checked
  whole when opened and rebuilt if damaged; a large one is checked block by block as it is first
  read, and a damaged block stops the reader (nothing read from it) and removes the cache so that
  the next start builds it again."""
  from lcx.data import token_cache
  tokenizer = ByteTokenizer()
  cache = token_cache.prepare(train_docs, tokenizer, tmp_path, progress=False)
  tokens_file = cache.folder / "tokens.bin"
  intact = tokens_file.read_bytes()
  assert len(cache.checksums) == -(-len(intact) // token_cache.BLOCK_BYTES) > 4
  _overwrite_middle(tokens_file, len(intact) // 4)
  with caplog.at_level("WARNING"):
    again = token_cache.prepare(train_docs, tokenizer, tmp_path, progress=False)
  assert "do not match their checksum" in caplog.text and "building it again" in caplog.text
  assert tokens_file.read_bytes() == intact
  # damaged offsets: rebuilt too
  offsets = np.load(cache.folder / "offsets.npy")
  offsets[3] += 1
  np.save(cache.folder / "offsets.npy", offsets)
  again = token_cache.prepare(train_docs, tokenizer, tmp_path, progress=False)
  np.testing.assert_array_equal(again.offsets, cache.offsets)
  # checked as read: the blocks before the damage read fine, the damaged one is refused
  _overwrite_middle(tokens_file, 1000)
  lazy = token_cache.prepare(train_docs, tokenizer, tmp_path, progress=False, check_at_open_bytes=0)
  np.testing.assert_array_equal(lazy.tokens(0), tokenizer.encode(train_docs[0]))
  block_start = (len(intact) // 2) // token_cache.BLOCK_BYTES * token_cache.BLOCK_BYTES
  first_reader = int(np.argmax(lazy.offsets[1:] > block_start))  # the first document in it
  with pytest.raises(token_cache.DamagedCache, match=rf"bytes {block_start:,}-.* of tokens.bin do "
                     r"not match their checksum .*removed it"):
    for i in range(len(lazy)):
      lazy.tokens(i)
  assert i == first_reader
  assert not lazy.folder.exists()
  again = token_cache.prepare(train_docs, tokenizer, tmp_path, progress=False)
  assert tokens_file.read_bytes() == intact


def test_a_json_lines_corpus_is_split_by_its_file_names_and_prepared_by_one_command(tmp_path):
  """data.name=jsonl: one document per line, the text in data.text_key; files under train/ and
  valid/ give those splits; `python -m lcx.data.prepare` builds it and its token caches; a line
  without the field is one clear message."""
  import json
  root = tmp_path / "corpus"
  for split, n in (("train", 40), ("valid", 4)):
    (root / split).mkdir(parents=True)
    (root / split / "part-0.jsonl").write_text("".join(
        json.dumps({"content": f"{split} document {i}: " + "word " * (40 + i), "id": i}) + "\n"
        for i in range(n)))
  flags = [f"--config.data.{k}={v}" for k, v in dict(
      name="jsonl", text_dir=root, text_key="content", data_dir=tmp_path / "data").items()]
  done = subprocess.run([sys.executable, "-m", "lcx.data.prepare", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "/train: 40 documents" in done.stdout and "/validation: 4 documents" in done.stdout
  train = Documents("jsonl", "train", data_dir=str(tmp_path / "data"), text_dir=str(root),
                    text_key="content")
  assert len(train) == 40 and train[0].startswith(b"train document ")
  assert corpora.jsonl_split_of("a/dev.jsonl", 3) == "validation"
  assert corpora.jsonl_split_of("shard-7.jsonl", 3) in corpora.SPLITS  # hashed
  (root / "train" / "part-1.jsonl").write_text('{"body": "no content field"}\n')
  done = subprocess.run([sys.executable, "-m", "lcx.data.prepare", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert "part-1.jsonl:1 has no text field 'content' (data.text_key); its fields: body" in (
      done.stderr)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: pg19's builder would go on to download")
def test_preparing_pg19_without_tensorflow_says_what_to_install_or_copy(tmp_path):
  """TFDS's pg19 builder reads its bucket through TensorFlow, which lcx does not install: one line
  names the package, and the folder copy that needs no TensorFlow."""
  done = subprocess.run([sys.executable, "-m", "lcx.data.prepare", "--config=configs/pretrain.py:125m",
                         f"--config.data.data_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("lcx.data.prepare: TFDS's pg19 builder needs the module 'tensorflow'")
  assert "pip install tensorflow-cpu" in last and "--config.data.name=text_dir" in last


def test_pose_stretches_each_row_s_positions_with_one_skip(train_docs):
  """data.pose_target_len: the same tokens; positions in two chunks, the second shifted by a
  skip in [0, target - L] (the top position target - 1 at most), a function of (seed, row)."""
  plain = _stream(train_docs, document_mask=False).batch(3)
  pose = _stream(train_docs, document_mask=False, pose_target_len=256)
  batch = pose.batch(3)
  np.testing.assert_array_equal(batch["tokens"], plain["tokens"])
  skips = []
  for positions in np.concatenate([pose.batch(s)["positions"] for s in range(40)]):
    jumps = np.flatnonzero(np.diff(positions) != 1)
    assert positions[0] == 0 and len(jumps) <= 1 and positions.max() <= 255
    skips.append(int(np.diff(positions)[jumps[0]]) - 1 if len(jumps) else 0)
  assert max(skips) > 150 and min(skips) < 75  # uniform over [0, 224]: both ends reached
  np.testing.assert_array_equal(next(pose.iterate(3))["positions"], batch["positions"])
  packed = _stream(train_docs, seq_len=512, pose_target_len=2048).batch(0)  # documents restart
  assert np.all(packed["positions"][packed["tokens"] == ByteTokenizer().eos_id] <= 1536)
  with pytest.raises(ValueError, match="data.pose_target_len=32 must exceed data.seq_len=32"):
    _stream(train_docs, pose_target_len=32)
