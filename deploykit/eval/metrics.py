"""LlamaFactory's predict metrics, computed the way ``ComputeSimilarity`` computes them.

Per sample: ROUGE-1/2/L F-scores of the jieba-segmented texts (rouge-chinese) and BLEU-4 of
the characters (nltk ``sentence_bleu``, smoothing method3), each x100 and rounded to 4
places; an empty prediction or label scores 0 on ROUGE. The result is the mean over samples
(numpy), and speed metrics are rounded as transformers' ``speed_metrics`` rounds them.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

SCORES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
SPEEDS = ("runtime", "samples_per_second", "steps_per_second")
PREFIX = "predict_"


@functools.cache
def _libs() -> tuple[Any, Any, Any, Any]:
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:  # pragma: no cover - the packages are dependencies
        from deploykit.core.errors import InputError

        raise InputError(
            f"metrics need jieba, nltk and rouge-chinese: {exc}",
            "pip install jieba nltk rouge-chinese",
        ) from None
    jieba.setLogLevel(logging.CRITICAL)
    jieba.initialize()
    return jieba, Rouge, sentence_bleu, SmoothingFunction().method3


def similarity(predict: str, label: str) -> dict[str, float]:
    """``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}`` of one prediction against its label."""
    jieba, rouge_cls, sentence_bleu, method3 = _libs()
    hypothesis = list(jieba.cut(predict))
    reference = list(jieba.cut(label))
    if not " ".join(hypothesis).split() or not " ".join(reference).split():
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        result = rouge_cls().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    out = {k: round(v["f"] * 100, 4) for k, v in result.items()}
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=method3)
    out["bleu-4"] = round(bleu * 100, 4)
    return out


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each score over samples (0.0 for none), as ``ComputeSimilarity._dump``."""
    import numpy as np

    return {k: float(np.mean([s[k] for s in scores])) if scores else 0.0 for k in SCORES}


def speed(samples: int, runtime: float, batch_size: int = 1) -> dict[str, float]:
    """transformers' ``speed_metrics`` for a predict run (one step per batch)."""
    steps = math.ceil(samples / batch_size)
    runtime = max(runtime, 1e-9)
    return {
        "runtime": round(runtime, 4),
        "samples_per_second": round(samples / runtime, 3),
        "steps_per_second": round(steps / runtime, 3),
    }


def predict_results(
    scores: list[dict[str, float]], runtime: float, preparation: float = 0.0
) -> dict[str, float]:
    """The ``predict_*`` dictionary LlamaFactory saves as ``predict_results.json``;
    ``preparation``: seconds spent loading the model (transformers' model_preparation_time)."""
    merged = {
        **mean_scores(scores),
        **speed(len(scores), runtime),
        "model_preparation_time": round(preparation, 4),
    }
    return {PREFIX + k: v for k, v in merged.items()}


def key(name: str) -> str:
    """``bleu-4``, ``predict_bleu-4``, ``BLEU-4`` -> ``predict_bleu-4`` (ValueError if unknown)."""
    bare = name.strip().lower().removeprefix(PREFIX)
    if bare not in SCORES + SPEEDS:
        raise ValueError(f"unknown metric {name!r}; one of {', '.join(SCORES + SPEEDS)}")
    return PREFIX + bare
