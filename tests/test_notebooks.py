"""The notebooks execute, and each .ipynb is the pair of its .py (jupytext)."""
import jupytext
import nbclient
import pytest

from tests.conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.parametrize("name", ["position_schemes", "study_results"])
def test_notebook_pairs_match(name):
  text = jupytext.read(NOTEBOOKS / f"{name}.py")
  paired = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
  assert [c.source for c in text.cells] == [c.source for c in paired.cells], (
      f"run `jupytext --sync notebooks/{name}.py`")


def _execute(name: str, env: dict | None = None):
  notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  if env:
    notebook.cells.insert(0, jupytext.reads(
        "import os\n" + "".join(f"os.environ[{k!r}] = {v!r}\n" for k, v in env.items()),
        fmt="py:percent").cells[0])
  client.execute()
  return notebook


def _outputs(notebook) -> str:
  return "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


def test_position_schemes_notebook_runs(tiny_study):
  """Every scheme's bias is drawn: from the study's trained run where it has one (alibi in the
  tiny study), from its initialization otherwise."""
  _, study, _ = tiny_study
  notebook = _execute("position_schemes", {"LCX_STUDY_DIR": str(study)})
  text = _outputs(notebook)
  assert "slopes: [0.5" in text
  assert "alibi: trained, step 6" in text and "fire: at initialization" in text
  images = [o for c in notebook.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) == 6


def test_study_results_notebook_runs(tiny_study):
  _, study, _ = tiny_study
  notebook = _execute("study_results", {"LCX_STUDY_DIR": str(study)})
  text = _outputs(notebook)
  assert "3 evaluated variants" in text and "| rope FT yarn x4 |" in text
  assert "'perplexity_vs_length.png'" in str(notebook.cells[-1].outputs)
