"""Answer extraction and binary reward scoring for completions (see `scorers`)."""

from score_ray.verify.scorers import ANSWER_FORMATS, extract_answer, score_completion

__all__ = ["ANSWER_FORMATS", "extract_answer", "score_completion"]
