"""Evaluate a run at many lengths: perplexity (non-overlapping and sliding), loss by position and
the retrieval suite; write RUN/eval/<name>.json, PNG plots, and W&B when it is on."""
import dataclasses
import json
import pathlib
import time

import numpy as np
import tqdm

from lcx.data.sources import Documents
from lcx.data.tokenizers import make_tokenizer
from lcx import positions
from lcx.data import retrieval
from lcx.config import retrieval_params
from lcx.evaluate import perplexity as ppl
from lcx.evaluate import plots
from lcx.evaluate.decode import Decoder
from lcx.evaluate.longppl import LongPPL
from lcx.evaluate.retrieval import retrieval_grid
from lcx.files import write_atomic
from lcx.evaluate.loading import LoadedRun, load_run
from lcx.evaluate.scoring import DoesNotFit, Scorer
from lcx.metrics import log_evaluation_to_wandb
from lcx.runs import layout
from lcx.runs.restore import saved_config


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  lengths: tuple[int, ...] = ()  # empty: 1x, 2x, 4x, 8x and 16x the training length
  retrieval_lengths: tuple[int, ...] = ()  # the retrieval suite's; empty: `lengths`
  # whose keys, values and entities the retrieval trials use: evaluation's (unseen in training)
  # or the training mixture's
  retrieval_space: str = retrieval.EVAL
  split: str = "validation"
  # target tokens scored per length (the same text at every length); 0 skips perplexity
  max_tokens: int = 16384
  stride: int = 0  # sliding-window stride; 0: the pretraining length; -1: no sliding window
  tasks: tuple[str, ...] = retrieval.TASKS  # the retrieval suite (lcx.data.retrieval)
  styles: tuple[str, ...] = retrieval.STYLES
  depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  trials: int = 5  # per (task, style, length, depth) cell; 0 skips retrieval
  name: str = ""  # output name; empty: derived from the config overrides
  max_batch_tokens: int = 32768
  seed: int = 0
  # Retrieval accuracy by the needle's distance in segments of this many tokens; 0: the model's
  # segment_len (none for a plain model). A study gives its window to plain runs too, so that a
  # full-attention arm is read in the same units as the memory arms.
  distance_unit: int = 0
  # LongPPL (lcx.evaluate.longppl) at lengths past its short window (0: the pretraining length),
  # with the paper's thresholds in nats
  longppl: bool = False
  longppl_window: int = 0
  longppl_drop: float = 2.0
  longppl_loss: float = 2.0

  def __post_init__(self):
    """Arguments that would give wrong numbers are refused, one line naming the flag."""
    for flag, lengths in (("lengths", self.lengths), ("retrieval_lengths", self.retrieval_lengths)):
      bad = [n for n in lengths if isinstance(n, bool) or not isinstance(n, int) or n <= 0]
      if bad:
        raise ValueError(f"--{flag}={','.join(map(str, lengths))}: lengths must be positive "
                         f"integers (not {', '.join(map(str, bad))})")
    bad = [d for d in self.depths if not 0 <= d <= 1]
    if bad or not self.depths:
      raise ValueError(f"--depths={','.join(map(str, self.depths))}: depths are fractions of the "
                       "text before the needle, in [0, 1], e.g. 0,0.5,1")
    for flag, given, allowed in (("tasks", self.tasks, retrieval.ALL_TASKS),
                                 ("styles", self.styles, retrieval.STYLES)):
      if problem := retrieval.choice_problem(given, allowed):
        raise ValueError(f"--{flag}={','.join(given)}: {problem}")
    for task in self.tasks if self.trials else ():
      if not set(self.styles) & set(retrieval.styles_of(task)):
        raise ValueError(f"--tasks={','.join(self.tasks)}: {task} is written in "
                         f"{', '.join(retrieval.styles_of(task))}, none of --styles="
                         f"{','.join(self.styles)}; add one or drop the task")
    if self.retrieval_space not in (retrieval.EVAL, retrieval.TRAIN):
      raise ValueError(f"--retrieval_space={self.retrieval_space!r} is not one of "
                       f"{retrieval.EVAL}, {retrieval.TRAIN}")
    if self.trials < 0:
      raise ValueError(f"--trials={self.trials} must be >= 0 (0 skips retrieval)")
    if self.distance_unit < 0:
      raise ValueError(f"--distance_unit={self.distance_unit} must be >= 0 (0: the model's "
                       "segment_len)")
    if self.stride < -1:
      raise ValueError(f"--stride={self.stride}: allowed are a positive stride, 0 (the "
                       "pretraining length) or -1 (no sliding window)")
    if self.max_tokens < 0:
      raise ValueError(f"--max_tokens={self.max_tokens} must be >= 0 (0 skips perplexity)")
    if self.longppl_window < 0:
      raise ValueError(f"--longppl_window={self.longppl_window} must be >= 0 (0: the "
                       "pretraining length)")
    LongPPL(window=1, drop=self.longppl_drop, ceiling=self.longppl_loss)  # checks the thresholds
    if "/" in self.name or self.name.startswith("."):
      raise ValueError(f"--name={self.name!r}: a file name inside RUN/eval/, without '/' or a "
                       "leading '.'")


def default_name(overrides) -> str:
  """From the model overrides (what changes the numbers): 'rope.scaling-yarn_rope.factor-4'."""
  parts = [o.replace("model.", "", 1).replace("=", "-") for o in overrides
           if o.startswith("model.")]
  if not parts:
    return "base"
  return "_".join("".join(ch if ch.isalnum() or ch in "-." else "_" for ch in p) for p in parts)


def _unrepresentable(run: LoadedRun, scorer: Scorer, lengths) -> dict[int, str]:
  """Lengths the scheme cannot represent or that would not fit in memory, with the reason."""
  reasons = {}
  for length in lengths:
    try:
      run.model.check_length(length)
      scorer.batch_rows(length)
    except ValueError as e:  # DoesNotFit is a ValueError too
      reasons[length] = f"not applicable: {e}"
  return reasons


def evaluate(run: LoadedRun, options: EvalOptions, overrides=(), progress: bool = True) -> dict:
  c = run.config
  train_length = int(c.data.seq_len)
  # Multiples are of the pretraining length, also for a fine-tune, so that runs compare.
  base_length = (int(saved_config(layout.source_dir(c.init_from, run.workdir)).data.seq_len)
                 if c.init_from else train_length)
  lengths = tuple(options.lengths) or tuple(m * base_length for m in (1, 2, 4, 8, 16))
  stride = options.stride or base_length
  longppl = (LongPPL(window=options.longppl_window or base_length, drop=options.longppl_drop,
                     ceiling=options.longppl_loss) if options.longppl else None)
  tokenizer = make_tokenizer(c.data.tokenizer)
  docs = Documents(c.data.name, options.split, data_dir=c.data.data_dir, text_dir=c.data.text_dir,
                   text_glob=c.data.text_glob, text_key=c.data.text_key)
  documents = ppl.document_tokens(docs, tokenizer)
  scorer = Scorer(run.model, run.mesh, tuple(map(tuple, c.mesh.rules)),
                  max_batch_tokens=options.max_batch_tokens)
  retrieval_lengths = tuple(options.retrieval_lengths) or lengths
  unrepresentable = _unrepresentable(run, scorer, dict.fromkeys(lengths + retrieval_lengths))
  longest = max(len(d) for d in documents) - 1
  skip = dict(unrepresentable)  # for perplexity, which also needs documents that long
  skip.update({n: f"no document in the split has {n + 1} tokens (the longest has {longest + 1})"
               for n in lengths if n > longest and n not in skip})
  scored = [n for n in lengths if n not in skip]
  segments = ppl.common_segments(documents, max(scored), options.max_tokens) if scored else []

  kinds = ([(t, st) for t in options.tasks for st in options.styles
            if st in retrieval.styles_of(t)] if options.trials else [])
  measures = () if not options.max_tokens else (
      ("perplexity", "sliding") if options.stride >= 0 else ("perplexity",))
  total = len(lengths) * len(measures) + len(retrieval_lengths) * len(kinds) * len(options.depths)
  bar = tqdm.tqdm(total=total, desc=f"eval {run.workdir.name}", unit="task", disable=not progress)
  started = time.perf_counter()
  tokens_scored = 0

  def tick(length, cells=1):
    bar.set_postfix(length=length, tok_s=f"{tokens_scored / (time.perf_counter() - started):,.0f}")
    bar.update(cells)

  rows = {"perplexity": [], "sliding": []}
  for length in lengths:
    for kind in measures:
      row = {"length": length, "multiple": length / base_length}
      if length in skip:
        row["not_applicable"] = skip[length]
      elif kind == "sliding" and (stride >= length or all(len(s) - 1 == length
                                                           for s in segments)):
        # the non-overlapping windows again (a stride past the length, or segments one window
        # long): their numbers, not scored twice
        row.update({k: v for k, v in rows["perplexity"][-1].items() if k not in row
                    and k not in ("by_position", "by_segment")}, stride=min(stride, length))
      else:
        try:
          if kind == "perplexity":
            row.update(ppl.evaluate_non_overlapping(scorer.losses, segments, length, tokenizer,
                                                    segment_len=run.model.cfg.segment_len,
                                                    longppl=longppl))
          else:
            row.update(ppl.evaluate_sliding(scorer.losses, segments, length,
                                            min(stride, length), tokenizer))
          tokens_scored += row["tokens"]
        except DoesNotFit as e:
          skip[length] = unrepresentable[length] = str(e)
          row["not_applicable"] = str(e)
      rows[kind].append(row)
      tick(length)

  scoring_seconds = time.perf_counter() - started  # perplexity only: what tokens/s measures
  grids = {}
  if kinds:
    text = retrieval.TextHaystack(np.concatenate([d[1:] for d in documents]))
    decoder = Decoder(scorer)
    for task, style in kinds:
      grids[f"{task}/{style}"] = retrieval_grid(
          decoder, tokenizer, task, style, retrieval_lengths, options.depths, options.trials, text,
          seed=options.seed, params=retrieval_params(c), not_applicable=unrepresentable,
          progress=tick, distance_unit=options.distance_unit or run.model.cfg.segment_len,
          space=options.retrieval_space)
  bar.close()

  return {
      "run": str(run.workdir), "name": options.name or default_name(overrides) + (
          "_train-space" if options.retrieval_space == retrieval.TRAIN else ""),
      "checkpoint_step": run.step, "scheme": c.model.position,
      # the scheme's own section where it has one (model.rope, model.t5, ...)
      "scheme_options": (c.model[c.model.position].to_dict()
                         if c.model.position in positions.option_types() else None),
      "position_layers": list(c.model.get("position_layers", ())),  # a per-layer pattern
      "train_length": train_length, "base_length": base_length, "split": options.split,
      # the keys a memory adds to each query's attention at the training length (the report's)
      "memory_keys_per_query": run.model.cfg.attention_context(train_length)[1],
      "overrides": list(overrides),
      "eval_options": dataclasses.asdict(options), "config": c.to_dict(),
      "perplexity": rows["perplexity"], "sliding": rows["sliding"], "retrieval": grids,
      "seconds": time.perf_counter() - started,
      "scoring_tokens_per_second": tokens_scored / scoring_seconds if tokens_scored else None,
  }


def write_outputs(results: dict, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  """RUN/eval/<name>.json and its PNG figures; returns their paths."""
  out = workdir / layout.EVAL
  out.mkdir(parents=True, exist_ok=True)
  name = results["name"]
  paths = {"json": out / f"{name}.json"}
  write_atomic(paths["json"], json.dumps(results, indent=2) + "\n")
  if results["perplexity"]:  # not for a retrieval-only evaluation (--max_tokens=0)
    paths["perplexity_png"] = plots.perplexity_vs_length(results, out / f"{name}-perplexity.png")
    paths["by_position_png"] = plots.loss_by_position(results,
                                                      out / f"{name}-loss_by_position.png")
  title = f"{results['scheme']}, {name}"
  for task in dict.fromkeys(key.split("/")[0] for key in results["retrieval"]):
    grids = [g for key, g in results["retrieval"].items() if key.startswith(f"{task}/")]
    paths[f"{task}_png"] = plots.retrieval_heatmaps(grids, f"{task}: {title}",
                                                   out / f"{name}-{task}.png")
  if results["retrieval"]:
    paths["retrieval_png"] = plots.retrieval_vs_length(
        results["retrieval"], results["base_length"], f"retrieval: {title}",
        out / f"{name}-retrieval.png")
  return paths


def evaluate_run(workdir, overrides=(), options: EvalOptions = EvalOptions(),
                 progress: bool = True) -> tuple[dict, dict]:
  """Loads the run, evaluates it and writes the outputs: (results, output paths)."""
  run = load_run(workdir, overrides)
  results = evaluate(run, options, overrides, progress)
  paths = write_outputs(results, run.workdir)
  log_evaluation_to_wandb(run.config.wandb, run.workdir, results, paths)
  return results, paths
