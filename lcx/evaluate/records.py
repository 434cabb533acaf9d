"""What evaluations record that readers pool without JAX (the report reads them too)."""

# Needle distances in segments, grouped as a memory sees them: the same segment, each of the next
# three (a small memory's reach), then doubling ranges.
DISTANCE_BUCKETS = ("0", "1", "2", "3", "4-7", "8-15", "16+")


def distance_bucket(distance: int) -> str:
  if distance < 4:
    return str(distance)
  return "4-7" if distance < 8 else "8-15" if distance < 16 else "16+"


def pool_distances(by_distances, kind: str) -> dict[str, tuple[float, int]]:
  """Accuracy (`exact` or `ranked`) per DISTANCE_BUCKETS bucket over one or more by_distance
  records (styles of a task, say), weighted by trials: bucket -> (accuracy, trials), in order."""
  pooled: dict[str, tuple[float, int]] = {}
  for record in by_distances:
    for distance, cell in record["distances"].items():
      hits, n = pooled.get(distance_bucket(int(distance)), (0.0, 0))
      pooled[distance_bucket(int(distance))] = (hits + cell[kind] * cell["trials"],
                                                n + cell["trials"])
  return {b: (pooled[b][0] / pooled[b][1], pooled[b][1]) for b in DISTANCE_BUCKETS
          if b in pooled}
