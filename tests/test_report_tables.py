"""The report's tables from hand-written study results: a row and a column only where something
was measured, and one cost row per training."""
from lcx.report import Variant
from lcx.report.tables import tables

PRETRAIN = {"tokens_seen": 4.1e6, "flops_seen": 4e12, "train_seconds": 110.0,
            "tokens_per_second": 4e4, "peak_memory_bytes": 2 ** 30}


def _grid(exact):
  return {"babi_qa2/python": {"task": "babi_qa2", "style": "python", "lengths": [128, 256],
                              "depths": [0.0], "trials": 4, "exact": [[e] for e in exact],
                              "ranked": [[e] for e in exact], "longest_at_90": None}}


def test_a_retrieval_only_evaluation_has_no_perplexity_row_and_its_training_one_cost_row():
  run = "runs/rope/pretrain"
  common = {"run": run, "scheme": "rope", "base_length": 128, "sliding": [],
            "config": {"model": {"segment_len": 64, "memory": "none"}, "data": {}},
            "memory_keys_per_query": 0}
  scored = Variant("rope (eval)", {**common, "retrieval": _grid([0.0, 0.0]), "perplexity": [
      {"multiple": m, "perplexity": 8.0 * m} for m in (1, 2, 4, 8, 16)]}, PRETRAIN, None)
  train_space = Variant("rope (eval-train-space)", {**common, "retrieval": _grid([0.75, 0.25]),
                                                    "perplexity": []}, PRETRAIN, None)
  text = tables([scored, train_space])
  perplexity_rows = [l for l in text.splitlines() if "/ 8.00 |" in l or "8.00 /" in l]
  assert [l.split(" |")[0] for l in perplexity_rows] == ["| rope (eval)"]
  assert "| rope (eval-train-space) | n/a" not in text
  # retrieval at the multiples scored (1x, 2x), not at those no variant was scored at
  assert "| variant | 1x | 2x | effective length | longest at >= 90% |" in text
  assert "| rope (eval-train-space) | 75% / 75% | 25% / 25% | 1x (4 / 4 trials) | n/a |" in text
  cost_rows = [l for l in text.splitlines() if "4.10M" in l]
  assert len(cost_rows) == 1 and cost_rows[0].startswith("| rope (eval) |")
  memory_rows = [l for l in text.splitlines() if "| 40.00k | 1.00 |" in l]  # the window's
  assert len(memory_rows) == 1 and memory_rows[0].startswith("| rope (eval) |")
