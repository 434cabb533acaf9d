"""The memory study: a fixed attention window (segments of `model.segment_len`) with each memory
mechanism, against the same window without memory and a plain model attending over the whole
training length, all at the same training tokens; RoPE inside the window, and ALiBi for the
window without memory and with XL's recurrence.

  python -m lcx.sweep experiments/memory.py:cpu --out runs/memory-cpu        # CPU, in two parts
  python -m lcx.sweep experiments/memory.py:cpu-more --out runs/memory-cpu
  python -m lcx.sweep experiments/memory.py:cpu-seeds --out runs/memory-cpu  # seeds 1 and 2
  python -m lcx.sweep experiments/memory.py:cpu-text-0 --out runs/memory-cpu-text  # text only,
  python -m lcx.sweep experiments/memory.py:cpu-text-1 --out runs/memory-cpu-text  # one part
  python -m lcx.sweep experiments/memory.py:cpu-text-2 --out runs/memory-cpu-text  # per seed
  python -m lcx.sweep experiments/memory.py:cpu-babi --out runs/memory-cpu-babi  # bAbI qa1, qa2
  python -m lcx.sweep experiments/memory.py:small --out gs://...             # 125m, pg19
  python -m lcx.sweep experiments/memory.py:base --out ...                   # 350m, pg19

Each run is evaluated at 1x-16x its training length, streamed segment by segment, with the loss
of each segment of the window (`by_segment`: a memory that is used lowers the loss of the second
and later segments below the window without one) and the passkey at depths that put it several
segments back. `cpu-seeds` trains the RoPE arms again with seeds 1 and 2 into the same folder, for
the spread of the differences. `cpu-babi` trains the window, XL, kNN and the full-length model on
bAbI's qa1 and qa2 alone (a fact, and two combined, spread over the segments) and asks them on
evaluation's names and places and again on training's (`eval-train-space`).

The retrieval rows (three quarters of every CPU row) are also most of the training loss, and an arm
that can reach a needle spends its steps there: its text is then trained less than the window's,
which cannot. Whether a memory lowers the loss of text is asked where nothing else differs: the
`cpu-text-<seed>` parts train the RoPE window and every RoPE memory arm on text alone (seeds 0, 1,
2; one part of about 16 minutes each, into their own folder), evaluated at 1x on more text.
"""
from lcx import memory
from lcx.data import retrieval
from lcx.sweep import Run, Stage

# Every registered mechanism but none (any added later too), each with RoPE.
MECHANISMS = tuple(name for name in memory.available() if name != "none")
# name -> the model overrides of the arm
ARMS = {
    "window": ("model.memory=none",),
    **{name: (f"model.memory={name}",) for name in MECHANISMS},
    "full": ("model.segment_len=0",),  # the plain model over the whole training length
    "alibi-window": ("model.position=alibi", "model.memory=none"),
    "alibi-xl": ("model.position=alibi", "model.memory=xl"),
}
ROPE_ARMS = ("window", *MECHANISMS)
# Three quarters of the training rows are retrieval documents (lcx.data.mixture) with the needle
# anywhere in the document, up to 3 segments before the question at CPU scale; answers weighted
# 20x. niah_single's short documents (39 tokens and up, python style) fit in one segment, so the
# copy is learned inside the window and then reached through the memory; passkey's start at 71.
MIXTURE = ("data.retrieval.fraction=0.75", "data.retrieval.answer_weight=20",
           "data.retrieval.tasks=('passkey','niah_single')")
# bAbI's qa1 and qa2 (BABILong-style) ask for one fact and for two combined, spread over the
# segments: what a memory must carry to answer. At CPU scale they have a part of their own
# (`cpu-babi`: the window, XL, kNN and the full-length model trained on them alone, stories of 4
# facts, 145-152 tokens and up in python style): added to the `cpu` part's mixture, its 1000
# steps learned neither them nor the passkey (the full-length model's exact passkey at 1x fell
# from 100% to 0%).
BABI = ("babi_qa1", "babi_qa2")
BABI_MIXTURE = ("data.retrieval.fraction=0.75", "data.retrieval.answer_weight=20",
                f"data.retrieval.tasks={BABI!r}", "data.retrieval.story_facts=4")
ACCELERATOR_MIXTURE = (*MIXTURE[:2],
                       f"data.retrieval.tasks={('passkey', 'niah_single', *BABI)!r}")
ALL_EVAL_TASKS = "--tasks=" + ",".join((*retrieval.TASKS, *BABI))  # the accelerator scales
# the CPU scale's settings but for the mixture: 256-token examples of 4 segments of 64, a kNN
# memory that holds the 3 segments before (k 16), dense attention (the fastest here at 64
# tokens), 1000 steps of 16 rows, python style only (the prose prompts do not fit)
CPU = ("data.retrieval.styles=('python',)", "data.seq_len=256", "data.batch_size=16",
       "model.knn.size=192", "model.knn.k=16", "model.attention=dense", "train.steps=1000",
       "eval.every_steps=500", "eval.probe_trials=0")
DEPTHS = "--depths=0,0.25,0.5,0.75,1"
BABI_TRIALS = ("--tasks=" + ",".join(BABI), "--styles=python", "--trials=4", DEPTHS,
               "--retrieval_lengths=256,512,1024")
# The same trials again with training's names and places (`eval-train-space`): what the tiny
# models learn of the tasks without the skill of copying a word they were never trained to
# answer, and whether a memory carries it past the window.
BABI_TRAIN_SPACE = ("--retrieval_space=train", "--max_tokens=0", *BABI_TRIALS)

SCALES = {
    # pretrain preset, segment length, overrides of every run, evaluation flags
    "cpu": ("tiny", 64, (*MIXTURE, *CPU),
            ("--max_tokens=4096", "--tasks=passkey", "--styles=python", "--trials=4", DEPTHS)),
    # bAbI at 1x-4x, where a story's first fact lies 0 to 15 segments back, and LongPPL
    "cpu-babi": ("tiny", 64, (*BABI_MIXTURE, *CPU), ("--max_tokens=4096", *BABI_TRIALS,
                                                     "--longppl")),
    # the presets' corpus and tokenizer: pg19 in 32,000 SentencePiece tokens (configs/pretrain.py)
    "small": ("125m", 256, (*ACCELERATOR_MIXTURE, "model.knn.size=4096"),
              ("--max_tokens=262144", "--trials=10", ALL_EVAL_TASKS)),
    "base": ("350m", 512, (*ACCELERATOR_MIXTURE, "model.knn.size=8192"),
             ("--max_tokens=262144", "--trials=10", ALL_EVAL_TASKS)),
}
SEEDS = (1, 2)
# On a CPU the arms come in two parts of about 20 minutes each (run them into one folder; the
# report compares them all): `cpu` the RoPE window, XL, kNN and the full-length model; `cpu-more`
# every other arm. `cpu-seeds` repeats the RoPE arms with seeds 1 and 2, evaluated at 1x only
# (the loss by segment, whose spread it is for).
CPU_FIRST = ("window", "xl", "knn", "full")
BABI_ARMS = ("window", "xl", "knn", "full")  # the `cpu-babi` part
SEED_EVAL = ("--lengths=256", "--trials=0", "--max_tokens=4096")
# The text-only parts: every CPU override but the retrieval mixture; the loss by segment at 1x
# scored on 4x the text of the other parts (a difference of a few hundredths is the question).
TEXT_SEEDS = (0, 1, 2)
TEXT_EVAL = ("--lengths=256", "--trials=0", "--max_tokens=16384")


def _run(name: str, scale: str, seed: int = 0, eval_flags: tuple | None = None,
         text_only: bool = False) -> Run:
  """One arm: pretraining, then the evaluation, whose retrieval is also read by the needle's
  distance in segments of the window (the full-attention arm in the same units)."""
  preset, segment_len, overrides, scale_eval_flags = SCALES[scale]
  eval_flags = scale_eval_flags if eval_flags is None else eval_flags
  if text_only:
    overrides = tuple(o for o in overrides if not o.startswith("data.retrieval."))
  label = name if seed == 0 else f"{name}-seed{seed}"
  stages = [
      Stage("pretrain", "pretrain", f"configs/pretrain.py:{preset}",
            (*overrides, f"model.segment_len={segment_len}", *ARMS[name], f"seed={seed}")),
      Stage("eval", "evaluate", source="pretrain",
            args=(*eval_flags, f"--distance_unit={segment_len}")),
  ]
  if scale == "cpu-babi":
    stages.append(Stage("eval-train-space", "evaluate", source="pretrain",
                        args=(*BABI_TRAIN_SPACE, f"--distance_unit={segment_len}")))
  if any(o.startswith("model.memory=") and o != "model.memory=none" for o in ARMS[name]):
    # the ablation: the same weights with the memory wiped at every segment, on the same text as
    # the evaluation's (the same lengths and tokens per length), no retrieval
    same_text = tuple(f for f in eval_flags if f.startswith(("--max_tokens=", "--lengths=")))
    stages.append(Stage("wiped", "evaluate", source="pretrain",
                        overrides=("model.memory_reset=true",), args=("--trials=0", *same_text)))
  return Run(label, tuple(stages), tags=(name, preset))


def get_sweep(arg: str = "cpu") -> list[Run]:
  text_parts = tuple(f"cpu-text-{seed}" for seed in TEXT_SEEDS)
  scales = (*SCALES, "cpu-more", "cpu-seeds", *text_parts)
  if arg not in scales:
    raise ValueError(f"memory study: unknown scale {arg!r}; allowed: {', '.join(scales)}")
  if arg in text_parts:
    seed = int(arg.removeprefix("cpu-text-"))
    return [_run(name, "cpu", seed, TEXT_EVAL, text_only=True) for name in ROPE_ARMS]
  if arg == "cpu-seeds":
    return [_run(name, "cpu", seed, SEED_EVAL) for seed in SEEDS for name in ROPE_ARMS]
  if arg == "cpu-babi":
    return [_run(name, arg) for name in BABI_ARMS]
  if arg.startswith("cpu"):
    arms = [a for a in ARMS if (a in CPU_FIRST) == (arg == "cpu")]
    return [_run(name, "cpu") for name in arms]
  return [_run(name, arg) for name in ARMS]
