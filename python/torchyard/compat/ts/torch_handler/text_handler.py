"""`TextHandler`: text clean-up, a basic English tokenizer and the model's vocabulary."""

import os
import re
import string
import unicodedata
from abc import ABC

import torch

from .base_handler import BaseHandler

_CONTRACTIONS = {"n't": " not", "'re": " are", "'s": " is", "'d": " would", "'ll": " will",
                 "'ve": " have", "'m": " am"}


def basic_english(text):
    """Lower-cases and splits words from punctuation, as torchtext's basic_english does."""
    text = text.lower()
    for pattern, repl in ((r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "),
                          (r",", " , "), (r"\(", " ( "), (r"\)", " ) "), (r"\!", " ! "),
                          (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " ")):
        text = re.sub(pattern, repl, text)
    return text.split()


class TextHandler(BaseHandler, ABC):
    """Loads the vocabulary named by the manifest's `sourceVocab` (a dict or a torchtext
    vocab saved with torch.save) and offers TorchServe's text clean-up steps."""

    def initialize(self, context):
        super().initialize(context)
        vocab_file = self.manifest.get("model", {}).get("sourceVocab") or "source_vocab.pt"
        path = os.path.join(context.system_properties["model_dir"], vocab_file)
        self.source_vocab = torch.load(path, weights_only=False) if os.path.isfile(path) else None
        self.tokenizer = basic_english

    def lookup(self, token):
        vocab = self.source_vocab
        if isinstance(vocab, dict):
            return vocab.get(token, vocab.get("<unk>", 0))
        return vocab[token]

    def _expand_contractions(self, text):
        for short, full in _CONTRACTIONS.items():
            text = text.replace(short, full)
        return text

    def _remove_accented_characters(self, text):
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8")

    def _remove_html_tags(self, text):
        return re.sub(r"<[^>]+>", "", text)

    def _remove_puncutation(self, text):
        return text.translate(str.maketrans("", "", string.punctuation))

    def _tokenize(self, text):
        return self.tokenizer(text)
