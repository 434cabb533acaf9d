"""The extrapolation study: every position scheme trained at one length and evaluated from 1x to
16x it; RoPE also zero-shot with each context-extension method and fine-tuned at 4x with PI and
YaRN, then evaluated again.

  python -m lcx.sweep experiments/extrapolation.py:cpu --out runs/extrapolation-cpu  # CPU, 20 min
  python -m lcx.sweep experiments/extrapolation.py:cpu-biases --out runs/extrapolation-cpu
  python -m lcx.sweep experiments/extrapolation.py:cpu-rotations --out runs/extrapolation-cpu
  python -m lcx.sweep experiments/extrapolation.py:cpu-data-biases --out runs/extrapolation-cpu
  python -m lcx.sweep experiments/extrapolation.py:cpu-recipes --out runs/extrapolation-cpu
  python -m lcx.sweep experiments/extrapolation.py:cpu-recipes-local --out runs/extrapolation-cpu
  python -m lcx.sweep experiments/extrapolation.py:cpu-babi --out runs/extrapolation-cpu-babi
  python -m lcx.sweep experiments/extrapolation.py:small --out gs://...    # L=1024 tokens, pg19, 32K SentencePiece
  python -m lcx.sweep experiments/extrapolation.py:base --out ...          # L=2048 tokens, pg19, 32K SentencePiece

The scales differ only in the argument: model preset, data and evaluation sizes. On a CPU the
schemes come in parts of at most 20 minutes each (`cpu`: the first five and RoPE's context
extension; `cpu-biases`: the other schemes with a bias, T5, KERPLE and FIRE; `cpu-rotations`:
the rest, xPos and p-RoPE; `cpu-data-biases`: the biases made from the data, FoX with the
paper's gates and with gates that start open, with ALiBi's and RoPE's pretraining and evaluation,
the `cpu` part's own stages, which a folder holding them runs once); run them into one folder and
the report compares them all. `small` and `base` run every scheme.

The bAbI part (`cpu-babi`, about 7 minutes, into a folder of its own) trains NoPE, RoPE and
ALiBi on bAbI's qa1 and qa2 (one supporting fact, and two combined) at 128 tokens and evaluates
them at 1x-4x, exact and ranked, on evaluation's names and places and again on training's, and
by LongPPL; the accelerator scales train and evaluate them beside RULER's tasks.

The recipes part (`cpu-recipes` and `cpu-recipes-local` on a CPU, two parts of about 15 minutes
into one folder; `small-recipes`, `base-recipes`) compares the long-context
recipes models ship with now, at 4 layers on a CPU so that a 3:1 pattern fits: RoPE, NoPE,
RNoPE-SWA (3 RoPE layers with a sliding window of L/4 to 1 global NoPE layer), iRoPE (Llama 4:
3 chunked RoPE layers of L/4 to 1 global NoPE layer with its temperature), and from the RoPE
run: zero-shot YaRN (s=2), PoSE-YaRN (fine-tuned at L with positions stretched to 4L, s=4),
LongRoPE (its table searched at 4L) and DroPE (RoPE dropped for 1/8 more steps with QK-norm,
its temperature fitted at 2L). Its claim: the DroPE paper's order on multi-key retrieval at 2x.
"""
from lcx import positions
from lcx.data import retrieval
from lcx.sweep import Run, Stage

FIRST = ("none", "sinusoidal", "learned", "rope", "alibi")
# Every other registered scheme (any added later too): those with a bias (T5, KERPLE, FIRE), then
# the rest (xPos) and p-rope, RoPE keeping its fastest 75% of rotary pairs (model.rope.keep).
OTHERS = [name for name in positions.available() if name not in FIRST]
# Biases made from the data (FoX's) have a part of their own, with ALiBi and RoPE's plain runs
# beside them: the `cpu` part's own first stages (a folder holding them runs none twice), which
# their claim compares them with.
DATA_BIASES = tuple(name for name in OTHERS if getattr(positions.bias_kind(name), "rows", False))
# FoX's gates start at 1/2 (the paper's initialization: a bias of -0.69 per token at first); its
# second arm starts them open, decay times log-spaced from 2 tokens to the longest evaluation
# (16x), so that retrieval's gradient reaches the far keys from the first step.
FOX_OPEN = "fox-open"
DATA_ARMS = (*DATA_BIASES, *((FOX_OPEN,) if "fox" in DATA_BIASES else ()))
DATA_COMPARED = ("alibi", "rope")
BIASES = tuple(name for name in OTHERS
               if positions.bias_kind(name) is not None and name not in DATA_BIASES)
ROTATIONS = (*(name for name in OTHERS if positions.bias_kind(name) is None), "p-rope")
SCHEME_OVERRIDES = {"p-rope": ("model.position=rope", "model.rope.keep=0.75")}
ZERO_SHOT = ("linear", "ntk", "dynamic_ntk", "yarn")  # RoPE scalings tried without training
FINETUNES = ("linear", "yarn")  # RoPE scalings fine-tuned at 4x the length

# At CPU scale (1000 steps at 3e-3) Adam moves a learned bias's parameters a few units at most,
# less than a sharp bias needs: at the model's rate T5, KERPLE and FIRE trained to 1x
# perplexities of 9.79, 8.25 and 7.06 against RoPE's 6.05. At 10x the rate they beat RoPE (5.14,
# 5.75, 5.83) but T5 and KERPLE retrieved no passkey at all; at 3x KERPLE kept its retrieval
# (100% at 1x-2x) at 7.16 (README). The study trains them at 3x; the accelerator scales train 20x
# longer and keep the one rate.
CPU_BIAS_RATE = ("train.position_lr_scale=3",)
# Every stage trains with retrieval rows (lcx.data.mixture): three quarters of the rows, answers
# weighted 20x, niah_single as the easy task the harder ones are learned from. Python style only
# at CPU scale, where the prose prompts do not fit in 128 tokens.
MIXTURE = ("data.retrieval.fraction=0.75", "data.retrieval.answer_weight=20",
           "data.retrieval.tasks=('passkey','niah_single','niah_multikey')")
CPU_MIXTURE = (*MIXTURE, "data.retrieval.styles=('python',)")
# The accelerator scales also train and evaluate bAbI's qa1 and qa2 (BABILong-style: one fact,
# and two combined) beside RULER's tasks. On a CPU they have a part of their own (`cpu-babi`,
# into its own folder): added to the `cpu` part's mixture, 1000 steps learn neither them nor the
# passkey (measured in the memory study). Stories of 3 facts, the most that fit 128 tokens
# (122-124 in the python style); evaluated at 1x-4x, where the facts lie up to 4 training
# lengths from the question, and by LongPPL.
BABI = ("babi_qa1", "babi_qa2")
BABI_SCHEMES = ("none", "rope", "alibi")  # no positions, a rotation, a bias
BABI_CPU_MIXTURE = (*MIXTURE[:2], f"data.retrieval.tasks={BABI!r}",
                    "data.retrieval.story_facts=3", "data.retrieval.styles=('python',)")
BABI_TRIALS = ("--tasks=" + ",".join(BABI), "--styles=python", "--trials=4", "--depths=0,0.5,1",
               "--retrieval_lengths=128,256,512")
# The same trials again with training's names and places (`eval-train-space`): what the tiny
# models learn of the tasks without the skill of copying a word they were never trained to
# answer, and how far past 1x that holds.
BABI_TRAIN_SPACE = ("--retrieval_space=train", "--max_tokens=0", *BABI_TRIALS)
ACCELERATOR_MIXTURE = (*MIXTURE[:2], "data.retrieval.tasks="
                       f"{('passkey', 'niah_single', 'niah_multikey', *BABI)!r}")
ALL_EVAL_TASKS = "--tasks=" + ",".join((*retrieval.TASKS, *BABI))

# dense attention trains 1.36x faster than the native kernel at 128 tokens on a 2-core CPU (the
# native one wins at the long evaluation lengths, so evaluations use auto)
CPU_PRETRAIN = ("data.batch_size=32", "train.steps=1000", "eval.every_steps=500",
                "model.attention=dense")

SCALES = {
    # pretrain preset, data overrides (every training stage), pretraining-only overrides,
    # fine-tune preset suffix, evaluation flags
    "cpu": ("tiny", CPU_MIXTURE, CPU_PRETRAIN, "",
            ("--max_tokens=4096", "--tasks=passkey,niah_multikey", "--styles=python",
             "--trials=3", "--depths=0,0.5,1")),
    "cpu-babi": ("tiny", BABI_CPU_MIXTURE, CPU_PRETRAIN, "",
                 ("--max_tokens=4096", *BABI_TRIALS, "--longppl")),
    "cpu-biases": None,  # cpu's settings, the BIASES schemes
    "cpu-data-biases": None,  # cpu's settings, DATA_ARMS with ALiBi's and RoPE's plain runs
    "cpu-rotations": None,  # cpu's settings, the ROTATIONS schemes
    "cpu-recipes": None,  # cpu's settings, the recipes (recipes below): RoPE's arms and NoPE
    "cpu-recipes-local": None,  # cpu's settings, the recipes with local layers
    "small-recipes": None,  # small's settings, the recipes
    "base-recipes": None,  # base's settings, the recipes
    # the presets' corpus and tokenizer: pg19 in 32,000 SentencePiece tokens (configs/pretrain.py)
    "small": ("125m", ACCELERATOR_MIXTURE, (), ",125m",
              ("--max_tokens=262144", "--trials=10", ALL_EVAL_TASKS)),
    "base": ("350m", ACCELERATOR_MIXTURE, (), ",350m",
             ("--max_tokens=262144", "--trials=10", ALL_EVAL_TASKS)),
}


EVAL_OVERRIDES = ("model.attention=auto",)  # the fastest kernel here, whatever trained


def get_sweep(arg: str = "cpu") -> list[Run]:
  if arg not in SCALES:
    raise ValueError(f"extrapolation study: unknown scale {arg!r}; allowed: {', '.join(SCALES)}")
  if "-recipes" in arg:
    scale, _, part = arg.partition("-recipes")
    runs = recipes(scale)
    return [r for r in runs if r.name in RECIPE_PARTS[part]] if scale == "cpu" else runs
  schemes = {"cpu": FIRST, "cpu-biases": BIASES, "cpu-data-biases": DATA_ARMS + DATA_COMPARED,
             "cpu-rotations": ROTATIONS, "cpu-babi": BABI_SCHEMES,
             }.get(arg, FIRST + BIASES + DATA_ARMS + ROTATIONS)
  preset, data, pretrain_only, finetune_suffix, eval_flags = SCALES[arg] or SCALES["cpu"]
  runs = []
  for scheme in schemes:
    position = SCHEME_OVERRIDES.get(scheme, (f"model.position={scheme}",))
    if scheme == FOX_OPEN:
      position = ("model.position=fox", "model.fox.decay_time_min=2",
                  f"model.fox.decay_time_max={16 * TRAIN_LENGTH[arg.partition('-')[0]]}")
    rate = (CPU_BIAS_RATE if arg.startswith("cpu") and scheme in BIASES + DATA_ARMS else ())
    stages = [
        Stage("pretrain", "pretrain", f"configs/pretrain.py:{preset}",
              (*position, *data, *pretrain_only, *rate)),
        Stage("eval", "evaluate", source="pretrain", overrides=EVAL_OVERRIDES, args=eval_flags),
    ]
    if arg == "cpu-babi":
      stages.append(Stage("eval-train-space", "evaluate", source="pretrain",
                          overrides=EVAL_OVERRIDES, args=BABI_TRAIN_SPACE))
    if scheme == "rope" and arg not in ("cpu-data-biases", "cpu-babi"):
      stages += [Stage(f"eval-zeroshot-{m}", "evaluate", source="pretrain",
                       overrides=(*EVAL_OVERRIDES, f"model.rope.scaling={m}",
                                  "model.rope.factor=4"),
                       args=(*eval_flags, "--trials=0")) for m in ZERO_SHOT]
      for method in FINETUNES:
        stages += [
            Stage(f"finetune-{method}", "finetune", f"configs/finetune.py:{method}{finetune_suffix}",
                  data, source="pretrain"),
            Stage(f"eval-finetune-{method}", "evaluate", source=f"finetune-{method}",
                  args=eval_flags),
        ]
    runs.append(Run(scheme, tuple(stages), tags=(scheme, arg)))
  return runs


# The recipes' lengths relative to the training length L (the CPU's tiny preset: 128 tokens).
RECIPE_LAYERS = "model.position_layers=('rope','rope','rope','none')"
RECIPE_KINDS = "model.attention_layers=('local','local','local','global')"
TRAIN_LENGTH = {"cpu": 128, "small": 1024, "base": 2048}
# CPU: the pattern needs 4 layers (the tiny preset has 2); the tuning commands' sizes
RECIPE_CPU = ("model.n_layers=4",)
TUNE_SIZE = {"cpu": ("--tokens=4096",), "small": ("--tokens=65536",), "base": ("--tokens=65536",)}
# The CPU's two parts (each under 20 minutes here): RoPE with what is made from it, and NoPE; the
# recipes with local layers.
RECIPE_PARTS = {"": ("recipes-rope", "recipes-none"),
                "-local": ("recipes-rnope-swa", "recipes-irope")}


def recipes(scale: str) -> list[Run]:
  """The recipes part at one scale (see the module docstring)."""
  preset, data, pretrain_only, finetune_suffix, eval_flags = SCALES[scale]
  L = TRAIN_LENGTH[scale]
  shape = RECIPE_CPU if scale == "cpu" else ()
  pretrain = lambda *model: Stage("pretrain", "pretrain", f"configs/pretrain.py:{preset}",
                                  (*model, *shape, *data, *pretrain_only))
  evaluate = lambda name, source, *args, overrides=EVAL_OVERRIDES: Stage(
      name, "evaluate", source=source, overrides=overrides, args=(*eval_flags, *args))
  arms = {
      "recipes-none": [pretrain("model.position=none")],
      "recipes-rnope-swa": [pretrain(RECIPE_LAYERS, RECIPE_KINDS, f"model.window={L // 4}")],
      "recipes-irope": [pretrain(RECIPE_LAYERS, RECIPE_KINDS, f"model.chunk={L // 4}",
                                 "model.temperature.kind=llama4",
                                 f"model.temperature.floor_scale={L}",
                                 "model.temperature.schemes=('none',)")],
  }
  runs = [Run(name, (*stages, evaluate("eval", "pretrain")), tags=(name, f"{scale}-recipes"))
          for name, stages in arms.items()]
  drope_steps = max(int(_steps(scale) / 8), 1)
  rope = [
      pretrain("model.position=rope"),
      evaluate("eval", "pretrain"),
      evaluate("eval-zeroshot-yarn-s2", "pretrain",
               overrides=(*EVAL_OVERRIDES, "model.rope.scaling=yarn", "model.rope.factor=2")),
      Stage("finetune-pose-yarn", "finetune", f"configs/finetune.py:yarn{finetune_suffix}",
            (*data, f"data.seq_len={L}", f"data.pose_target_len={4 * L}"), source="pretrain"),
      evaluate("eval-finetune-pose-yarn", "finetune-pose-yarn"),
      Stage("longrope-s4", "longrope", source="pretrain", args=("--factor=4", *TUNE_SIZE[scale])),
      evaluate("eval-longrope-s4", "pretrain", "--overrides_from=pretrain/longrope/s4.json"),
      Stage("finetune-drope", "finetune", f"configs/finetune.py:drope{finetune_suffix}",
            (*data, f"train.steps={drope_steps}"), source="pretrain"),
      Stage("drope-fit", "drope", source="finetune-drope", args=("--multiple=2", *TUNE_SIZE[scale])),
      evaluate("eval-drope", "finetune-drope", "--overrides_from=finetune-drope/drope.json"),
  ]
  return [Run("recipes-rope", tuple(rope), tags=("recipes-rope", f"{scale}-recipes")), *runs]


def _steps(scale: str) -> int:
  """The pretraining steps of a scale (the CPU's set in its overrides)."""
  overrides = dict(o.split("=", 1) for o in SCALES[scale][2])
  if "train.steps" in overrides:
    return int(overrides["train.steps"])
  from configs import pretrain
  return pretrain.get_config(SCALES[scale][0]).train.steps
