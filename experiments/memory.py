"""The memory study: a fixed attention window (segments of `model.segment_len`) with each memory
mechanism, against the same window without memory and a plain model attending over the whole
training length, all at the same training tokens; RoPE inside the window, and ALiBi for the
window without memory and with XL's recurrence.

  python -m lcx.sweep experiments/memory.py:cpu --out runs/memory-cpu        # CPU
  python -m lcx.sweep experiments/memory.py:cpu-seeds --out runs/memory-cpu  # seeds 1 and 2
  python -m lcx.sweep experiments/memory.py:small --out gs://...             # 125m, pg19
  python -m lcx.sweep experiments/memory.py:base --out ...                   # 350m, pg19

Each run is evaluated at 1x-16x its training length, streamed segment by segment, with the loss
of each segment of the window (`by_segment`: a memory that is used lowers the loss of the second
and later segments below the window without one) and the passkey at depths that put it several
segments back. `cpu-seeds` trains the RoPE arms again with seeds 1 and 2 into the same folder, for
the spread of the differences.
"""
from lcx import memory
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
SCALES = {
    # pretrain preset, overrides of every run, evaluation flags. The CPU scale: 256-token
    # examples of 4 segments of 64, a kNN memory that holds the 3 segments before (k 16),
    # dense attention (the fastest here at 64 tokens), 800 steps of 16 rows.
    "cpu": ("tiny", ("data.seq_len=256", "data.batch_size=16", "model.segment_len=64",
                     "model.knn.size=192", "model.knn.k=16", "model.attention=dense",
                     "train.steps=800", "eval.every_steps=400", "eval.probe_trials=0"),
            ("--max_tokens=4096", "--tasks=passkey", "--styles=python", "--trials=4",
             "--depths=0,0.5,1")),
    "small": ("125m", ("data.name=pg19", "data.text_key=book_text", "model.segment_len=256",
                       "model.knn.size=4096"), ("--max_tokens=262144", "--trials=10")),
    "base": ("350m", ("data.name=pg19", "data.text_key=book_text", "model.segment_len=512",
                      "model.knn.size=8192"), ("--max_tokens=262144", "--trials=10")),
}
SEEDS = (1, 2)


def _run(name: str, preset: str, overrides: tuple, eval_flags: tuple, seed: int = 0) -> Run:
  label = name if seed == 0 else f"{name}-seed{seed}"
  return Run(label, (
      Stage("pretrain", "pretrain", f"configs/pretrain.py:{preset}",
            (*overrides, *ARMS[name], f"seed={seed}")),
      Stage("eval", "evaluate", source="pretrain", args=eval_flags),
  ), tags=(name, preset))


def get_sweep(arg: str = "cpu") -> list[Run]:
  scales = (*SCALES, "cpu-seeds")
  if arg not in scales:
    raise ValueError(f"memory study: unknown scale {arg!r}; allowed: {', '.join(scales)}")
  preset, overrides, eval_flags = SCALES["cpu" if arg == "cpu-seeds" else arg]
  if arg == "cpu-seeds":
    return [_run(name, preset, overrides, eval_flags, seed) for seed in SEEDS
            for name in ROPE_ARMS]
  return [_run(name, preset, overrides, eval_flags) for name in ARMS]
