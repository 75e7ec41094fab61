"""Evaluation: perplexity by the protocol of GPTQ, OneBit and BinaryMoS, and the texts to measure it on.

>>> from optimum_binarymos.eval import load_eval_text, perplexity
>>> result = perplexity(model, tokenizer, text=load_eval_text("wikitext2"), seq_len=2048)  # doctest: +SKIP
>>> result.ppl  # doctest: +SKIP
"""

from .data import EVAL_DATASETS, load_eval_documents, load_eval_text
from .perplexity import PerplexityResult, perplexity
from .windows import c4_windows, split_into_windows, tokenize_text

__all__ = [
    "EVAL_DATASETS",
    "PerplexityResult",
    "c4_windows",
    "load_eval_documents",
    "load_eval_text",
    "perplexity",
    "split_into_windows",
    "tokenize_text",
]
