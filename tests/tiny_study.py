"""A two-run study small enough for tests: `tests/tiny_study.py:DATA_DIR`."""
from lcx.sweep import Run, Stage, product

TINY = ("data.seq_len=32", "data.batch_size=8", "model.d_model=32", "model.mlp_dim=64",
        "train.steps=6", "train.log_every=1", "train.warmup_steps=2", "train.peak_flops=1e12",
        "checkpoint.every_steps=3", "wandb.mode=disabled")
EVAL = ("--lengths=32,64", "--max_tokens=256", "--trials=1", "--depths=0.5",
        "--tasks=passkey,niah_single")


def get_sweep(data_dir: str) -> list[Run]:
  runs = []
  for point in product(position=["alibi", "rope"]):
    stages = [Stage("pretrain", "pretrain", "configs/pretrain.py:tiny",
                    (f"model.position={point['position']}", f"data.data_dir={data_dir}", *TINY)),
              Stage("eval", "evaluate", source="pretrain", args=EVAL,
                    overrides=("wandb.mode=disabled",))]
    if point["position"] == "rope":
      stages += [Stage("finetune-yarn", "finetune", "configs/finetune.py:yarn",
                       (f"data.data_dir={data_dir}", *TINY[2:], "data.seq_len=64",
                        "data.batch_size=8", "train.steps=2"), source="pretrain"),
                 Stage("eval-finetune-yarn", "evaluate", source="finetune-yarn", args=EVAL,
                       overrides=("wandb.mode=disabled",))]
    runs.append(Run(point["position"], tuple(stages), tags=(point["position"],)))
  return runs
