"""`ts.handler_utils.text_utils`: torchtext's `basic_english` tokenizer and n-grams."""

import re

_BASIC_ENGLISH = [(re.compile(pattern), repl) for pattern, repl in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "),
    (r"\(", " ( "), (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "),
    (r"\:", " "), (r"\s+", " "))]


def ngrams_iterator(token_list, ngrams):
    """The tokens, then every run of 2..`ngrams` consecutive tokens joined by spaces."""
    yield from token_list
    for n in range(2, ngrams + 1):
        for start in range(len(token_list) - n + 1):
            yield " ".join(token_list[start:start + n])


def _basic_english(line):
    """Lower-cases and splits words from punctuation, as torchtext's basic_english does."""
    line = line.lower()
    for pattern, repl in _BASIC_ENGLISH:
        line = pattern.sub(repl, line)
    return line.split()


def get_tokenizer(tokenizer, language="en"):
    """`None`: split on spaces; "basic_english" (English only); or a callable, returned."""
    if tokenizer is None:
        return str.split
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError("Basic normalization is only available for English(en)")
        return _basic_english
    raise ValueError(f"tokenizer {tokenizer!r} is not part of torchyard's stand-in; install "
                     "TorchServe's package (pip install torchserve==0.12.0) to use it")
