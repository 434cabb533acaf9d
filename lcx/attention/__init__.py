"""Attention kernels behind one signature, and the switch that picks one (model.attention).

  attend(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
         q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True) -> o_BQHK

Causality is by index: query i sees keys j <= i + (K - Q), so a query block aligned with the end
of the keys (a cache) is handled too. Segment ids, when given, keep packed documents apart.
`bias_fn(q_positions, k_positions) -> (B, H, Q, K)` is the position scheme's bias (a
lcx.positions.Bias, which says what it is); a tiled kernel calls it per tile, the dense
reference once. Which kernel takes which bias is its record's (kernels.py): the library kernels
(cuDNN on GPU, splash on TPU) take none, so schemes with one run blockwise there, or through
lcx's own Pallas kernel (`pallas`: GPU, TPU, and the interpreter on a CPU), which evaluates any
bias per tile with its parameters' gradient; the native CPU kernel takes a fixed bias in the
linear closed form (ALiBi's), which it computes itself from the slopes, and refuses learned ones,
whose gradient it could not return.

Dense, blockwise and pallas also take `row_bias=(a_BHQ, b_BHK)`: a data-dependent bias made of two
per-row vectors, the score of (i, j) getting a_i - b_j (the Forgetting Transformer's form), which
the tiled kernels read a tile's slice at a time and differentiate (tests/test_row_bias.py).

The package:
  kernels.py   one record per kernel, and the rules read from them (check, accepts, ...)
  choice.py    a named kernel or `auto`'s measured choice per call (tables/<device>.json)
  tiles.py     what the tiled kernels share: tile geometry, the bias split for per-tile use
  library.py   the dense reference, cuDNN's and splash;  blockwise.py  pallas.py  native/
  context.py   attention over a sequence sharded on the mesh's context axis (the gather);
  ring.py      its ring variant, keys passed device to device
Importing this face loads no kernel: each is imported when first used.
"""
from lcx.attention.choice import Choice, choose, make, select
from lcx.attention.context import EXCHANGES as CONTEXT_EXCHANGES, attend_over_context
from lcx.attention.kernels import (CHOICES, FALLBACK, OFFSET_TAKERS, REFERENCE, TILED, accepts,
                                   auto_candidates,
                                   cannot_run, check, function, masks_local_by_index, preference,
                                   takes_call)

__all__ = ["CHOICES", "CONTEXT_EXCHANGES", "FALLBACK", "OFFSET_TAKERS", "REFERENCE", "TILED", "Choice", "accepts",
           "attend_over_context", "auto_candidates", "cannot_run", "check", "choose", "function",
           "make", "masks_local_by_index", "preference", "select", "takes_call"]
