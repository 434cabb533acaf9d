"""lcx: pretraining decoder-only transformers with the position scheme as the variable under study."""
