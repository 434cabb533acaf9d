"""LongRoPE's search (python -m lcx.longrope search): its seeds are the closed-form methods, its
tables keep the paper's constraint, its result is never worse than them and reproduces in
lcx.evaluate with the overrides it prints."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lcx.evaluate.runner import EvalOptions, evaluate_run
from lcx.longrope import SearchOptions, constrain, mutate, search, seed_tables
from lcx.positions.rope import RopeOptions, scaled_frequencies
from tests.conftest import ROOT


def test_the_seed_tables_are_pi_ntk_and_yarn():
  pairs, factor, base, original = 8, 4.0, 10000.0, 64
  seeds = seed_tables(pairs, factor, base, original)
  for name, scaling in (("pi", "linear"), ("ntk", "ntk"), ("yarn", "yarn")):
    longrope = RopeOptions(base=base, scaling="longrope", factor=factor, original_length=original,
                           long_factor=tuple(seeds[name]), attention_factor=1.0)
    closed = RopeOptions(base=base, scaling=scaling, factor=factor, original_length=original)
    np.testing.assert_allclose(scaled_frequencies(2 * pairs, longrope, 4 * original)[0],
                               scaled_frequencies(2 * pairs, closed, 4 * original)[0], rtol=1e-5)
  rng = np.random.default_rng(0)
  for _ in range(20):  # the paper's constraint: non-decreasing in the pair index, >= 1
    table = mutate(seeds["yarn"], rng, factor)
    assert np.all(np.diff(table) >= 0) and table.min() >= 1 and table.max() <= 2 * factor
  np.testing.assert_array_equal(constrain(np.array([3.0, 0.5, 2.0, 9.0]), 4.0), [3, 3, 3, 8])


def test_the_search_beats_its_seeds_and_its_overrides_reproduce_in_evaluation(trained_run,
                                                                               tmp_path):
  run = shutil.copytree(trained_run, tmp_path / "run")
  options = SearchOptions(factor=4, population=4, generations=2, tokens=512)
  result, path = search(run, options, progress=False)
  assert json.loads(path.read_text()) == result and path == run / "longrope" / "s4.json"
  assert result["perplexity"] <= min(result["seed_perplexity"].values())
  assert set(result["seed_perplexity"]) == {"pi", "ntk", "yarn"}
  table = np.array(result["long_factor"])
  assert np.all(np.diff(table) >= 0) and table.min() >= 1
  evaluated, _ = evaluate_run(run, result["overrides"], EvalOptions(
      lengths=(result["length"],), max_tokens=512, stride=-1, trials=0), progress=False)
  assert evaluated["perplexity"][0]["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)


def test_the_command_refuses_a_run_without_rope_in_one_line(trained_run, tmp_path):
  run = shutil.copytree(trained_run, tmp_path / "run")
  config = json.loads((run / "config.json").read_text())
  config["model"]["position"] = "alibi"
  (run / "config.json").write_text(json.dumps(config))
  result = subprocess.run([sys.executable, "-m", "lcx.longrope", "search", f"--workdir={run}",
                           "--factor=2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("lcx.longrope: ")
  assert "LongRoPE's search needs a RoPE run" in result.stderr
