"""Retrieval tasks generated from a corpus's own text: what evaluation scores (lcx.evaluate) and
what the training mixture teaches (lcx.data.mixture), from disjoint key and value spaces."""
from lcx.data.retrieval.haystack import DocumentHaystack, NoiseHaystack, TextHaystack, boundaries
from lcx.data.retrieval.spaces import EVAL, TRAIN, space_of
from lcx.data.retrieval.tasks import (STYLES, TASKS, TaskParams, Trial, build_trial, choice_problem,
                                 default_haystack, minimum_length)

__all__ = ["DocumentHaystack", "NoiseHaystack", "TextHaystack", "boundaries", "EVAL", "TRAIN", "space_of", "STYLES",
           "TASKS", "TaskParams", "Trial", "build_trial", "choice_problem", "default_haystack",
           "minimum_length"]
