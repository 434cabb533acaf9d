"""How the sweep hands a stage to the machines: the scripts in launch/, or a child process.

A stage is a module (lcx.train or lcx.evaluate) and its flags; a launcher turns that into the
command to run here. `local` and `multiprocess:N` and `tpu_pod:TPU:ZONE` run the stage and wait
for it; `slurm` submits it as a job (sbatch) that starts once the job of its source stage has
succeeded, and returns at once.
"""
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
KINDS = ("local", "multiprocess:N", "slurm", "tpu_pod:TPU_NAME:ZONE")


@dataclasses.dataclass(frozen=True)
class Launcher:
  kind: str  # local, multiprocess, slurm, tpu_pod
  params: tuple[str, ...] = ()  # multiprocess: (N,); tpu_pod: (TPU_NAME, ZONE)
  extra: tuple[str, ...] = ()  # options for the launcher's own tool (sbatch, the script)

  @property
  def submits(self) -> bool:
    """True when the command submits the stage (returns before it ran) instead of running it."""
    return self.kind == "slurm"

  @property
  def remote(self) -> bool:
    """True when the stage runs on other machines, which see the study directory by its path."""
    return self.kind in ("slurm", "tpu_pod")

  def command(self, module: str, flags: list[str], *, job_name: str = "", log=None,
              after: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for one stage; `after` are the job ids it waits for (slurm)."""
    # the scripts' first argument: none for training, else the command (evaluate, convert, ...)
    script_mode = [] if module == "lcx.train" else [module.removeprefix("lcx.")]
    if self.kind == "local" or self.kind == "multiprocess" and module != "lcx.train":
      return [sys.executable, "-m", module, *flags], {}
    if self.kind == "multiprocess":
      return [str(LAUNCH / "multiprocess.sh"), self.params[0], *self.extra, *flags], {
          "PYTHON": sys.executable}
    if self.kind == "tpu_pod":
      # Set-up happens once, before the study (launch/tpu_pod.sh TPU ZONE); evaluation needs one
      # host only.
      return ([str(LAUNCH / "tpu_pod.sh"), *self.params, *script_mode, *flags],
              {"SETUP": "0", "WORKERS": "all" if module == "lcx.train" else "0"})
    # --chdir: the job finds configs/ and .venv in this checkout (sbatch runs a copy of the script).
    sbatch = ["sbatch", "--parsable", f"--job-name={job_name}", f"--chdir={ROOT}"]
    if log is not None:
      sbatch.append(f"--output={log}")
    if after:
      sbatch += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    sbatch += self.extra
    if module != "lcx.train":
      sbatch.append("--nodes=1")  # evaluation runs in one process, after any --nodes in extra
    return [*sbatch, str(LAUNCH / "slurm.sbatch"), *script_mode, *flags], {}


def parse(spec: str, extra: str = "") -> Launcher:
  """'local', 'multiprocess:2', 'slurm' or 'tpu_pod:NAME:ZONE'; extra is shell-quoted options
  for the launcher's tool (e.g. '--partition=gpu --nodes=4' for sbatch)."""
  kind, *params = spec.split(":") if spec else ["local"]
  valid = {"local": 0, "multiprocess": 1, "slurm": 0, "tpu_pod": 2}
  if kind not in valid or len(params) != valid[kind] or not all(params) or (
      kind == "multiprocess" and not re.fullmatch(r"[1-9][0-9]*", params[0])):
    raise ValueError(f"launcher {spec!r} is not one of: {', '.join(KINDS)}")
  return Launcher(kind, tuple(params), tuple(shlex.split(extra)))


def submit(argv: list[str], env: dict[str, str]) -> str:
  """Runs a submitting command (sbatch --parsable) and returns the job id it printed."""
  result = subprocess.run(argv, capture_output=True, text=True, env=env)
  if result.returncode != 0:
    raise RuntimeError(f"{shlex.join(argv[:1])} failed (exit {result.returncode}): "
                       f"{result.stderr.strip() or result.stdout.strip()}")
  return result.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
