"""Retrieval tasks generated from a corpus's own text: what evaluation scores (lcx.evaluate) and
what the training mixture teaches (lcx.data.mixture), from disjoint key and value spaces."""
from lcx.data.retrieval.haystack import DocumentHaystack, NoiseHaystack, TextHaystack, boundaries
from lcx.data.retrieval.spaces import EVAL, TRAIN, space_of
from lcx.data.retrieval.tasks import (ALL_TASKS, BABI_TASKS, STYLES, TASKS, TaskParams, Trial,
                                      build_trial, choice_problem, default_haystack,
                                      minimum_length, styles_of)

__all__ = ["ALL_TASKS", "BABI_TASKS", "DocumentHaystack", "NoiseHaystack", "TextHaystack",
           "boundaries", "EVAL", "TRAIN", "space_of", "STYLES", "TASKS", "TaskParams", "Trial",
           "build_trial", "choice_problem", "default_haystack", "minimum_length", "styles_of"]
