"""`TextHandler`: text clean-up, a basic English tokenizer, the model's vocabulary, and
Captum's Layer Integrated Gradients over the model's `embedding` for explanations."""

import logging
import os
import re
import string
import unicodedata
from abc import ABC

import torch
import torch.nn.functional as F

from ts.handler_utils.text_utils import get_tokenizer
from ts.utils.util import CLEANUP_REGEX

from .base_handler import BaseHandler
from ._captum import captum_attr

logger = logging.getLogger(__name__)

#: Contractions whose stem changes; other "n't", "'re", ... endings expand regularly.
_IRREGULAR = {"can't": "cannot", "won't": "will not", "shan't": "shall not", "ain't": "is not",
              "let's": "let us", "y'all": "you all", "o'clock": "of the clock"}
_REGULAR = {"n't": " not", "'re": " are", "'s": " is", "'d": " would", "'ll": " will",
            "'ve": " have", "'m": " am"}
_CONTRACTION = re.compile("|".join(map(re.escape, [*_IRREGULAR, *_REGULAR])), re.IGNORECASE)


class TextHandler(BaseHandler, ABC):
    """Loads the vocabulary named by the manifest's `sourceVocab` (or `source_vocab.pt`: a
    dict or a torchtext vocab saved with torch.save) and offers TorchServe's text clean-up
    steps."""

    def __init__(self):
        super().__init__()
        self.source_vocab = None
        self.tokenizer = get_tokenizer("basic_english")
        self.input_text = None
        self._lig = None

    def initialize(self, context):
        super().initialize(context)
        vocab_file = self.manifest.get("model", {}).get("sourceVocab") or "source_vocab.pt"
        path = os.path.join(context.system_properties["model_dir"], vocab_file)
        if not os.path.isfile(path):
            raise RuntimeError("Missing the source_vocab file. Refer default handler "
                               "documentation for details on using text_handler.")
        self.source_vocab = torch.load(path, weights_only=False)

    @property
    def lig(self):
        """Captum's LayerIntegratedGradients over the model's `embedding`, made on first use."""
        if getattr(self, "_lig", None) is None:
            self._lig = captum_attr().LayerIntegratedGradients(self.model, self.model.embedding)
        return self._lig

    @lig.setter
    def lig(self, value):
        self._lig = value

    def lookup(self, token):
        """The id of `token`: a dict vocabulary answers `<unk>`'s (or 0) for unknown words."""
        vocab = self.source_vocab
        if isinstance(vocab, dict):
            return vocab.get(token, vocab.get("<unk>", 0))
        return vocab[token]

    def _expand_contractions(self, text):
        """"wasn't" → "was not", "can't" → "cannot", ...; remaining apostrophes go."""

        def expand(match):
            found = match.group(0)
            full = _IRREGULAR.get(found.lower()) or _REGULAR[found.lower()]
            return found[0] + full[1:] if found.lower() in _IRREGULAR else full

        return _CONTRACTION.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text):
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8",
                                                                                    "ignore")

    def _remove_html_tags(self, text):
        return CLEANUP_REGEX.sub("", text)

    def _remove_punctuation(self, text):
        return text.translate(str.maketrans("", "", string.punctuation))

    def _remove_puncutation(self, *args, **kwargs):
        """TorchServe's original, misspelt name."""
        return self._remove_punctuation(*args, **kwargs)

    def _tokenize(self, text):
        return self.tokenizer(text)

    def get_word_token(self, input_tokens):
        """The tokens without the BPE space marker "Ġ"."""
        return [token.replace("Ġ", "") for token in input_tokens]

    def summarize_attributions(self, attributions):
        """Softmax over the embedding dimension, scaled by the norm of the per-token sums."""
        attributions = F.softmax(attributions, dim=-1)
        return attributions / torch.norm(attributions.sum(dim=-1))
