"""Built-in `text_classifier`: an EmbeddingBag-style model over token ids, classes out."""

import logging

import torch
import torch.nn.functional as F

from ts.handler_utils.text_utils import ngrams_iterator
from ts.utils.util import map_class_to_label

from ._captum import captum_attr
from .text_handler import TextHandler

logger = logging.getLogger(__name__)


class TextClassifier(TextHandler):
    """Cleans and tokenizes each text, looks up its words and word pairs, runs
    `model(token_ids, offsets)`, answers `{label: probability}` for every class. Unlike
    TorchServe's, which serves only a batch's first text, every text of a batch is served."""

    ngrams = 2

    def _words(self, text):
        """The words of `text` after TorchServe's clean-up."""
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        text = self._remove_html_tags(str(text)).lower()
        text = self._remove_accented_characters(self._expand_contractions(text))
        return self._tokenize(self._remove_punctuation(text))

    def preprocess(self, data):
        ids, offsets = [], []
        for row in data:
            offsets.append(len(ids))
            words = self._words(row.get("data") or row.get("body"))
            ids.extend(self.lookup(token) for token in ngrams_iterator(words, self.ngrams))
        return torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(offsets, dtype=torch.int64)

    def inference(self, data, *args, **kwargs):
        text, offsets = data
        return super().inference(text, offsets.to(self.device))

    def postprocess(self, data):
        probs = F.softmax(data, dim=1).tolist()
        return map_class_to_label(probs, self.mapping)

    def get_insights(self, text_preprocess, raw_text, target=0):
        """Layer Integrated Gradients of the first text's token ids against a padding
        reference: `[{"importances": [...], "words": [...]}]`."""
        ids, offsets = text_preprocess
        end = int(offsets[1]) if len(offsets) > 1 else len(ids)
        text_tensor = ids[:end].to(self.device)
        reference = captum_attr().TokenReferenceBase().generate_reference(
            text_tensor.shape[0], device=self.device).squeeze(0)
        attributions = self.lig.attribute(
            text_tensor, reference, additional_forward_args=(torch.tensor([0], device=self.device)),
            return_convergence_delta=False, target=int(target))
        words = self.get_word_token(self._words(raw_text))
        return [{"importances": self.summarize_attributions(attributions).tolist(),
                 "words": words}]
