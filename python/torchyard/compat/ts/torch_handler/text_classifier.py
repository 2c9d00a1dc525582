"""Built-in `text_classifier`: an EmbeddingBag-style model over token ids, classes out."""

import torch
import torch.nn.functional as F

from ts.utils.util import map_class_to_label

from .text_handler import TextHandler


def ngrams_iterator(tokens, ngrams):
    """The tokens, then every run of 2..`ngrams` consecutive tokens joined by spaces."""
    yield from tokens
    for n in range(2, ngrams + 1):
        for start in range(len(tokens) - n + 1):
            yield " ".join(tokens[start:start + n])


class TextClassifier(TextHandler):
    """Cleans and tokenizes each text, looks up its words and word pairs, runs
    `model(token_ids, offsets)`, answers `{label: probability}` for every class."""

    ngrams = 2

    def preprocess(self, data):
        ids, offsets = [], []
        for row in data:
            text = row.get("data")
            if text is None:
                text = row.get("body")
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            text = self._remove_html_tags(str(text))
            text = self._remove_accented_characters(self._expand_contractions(text.lower()))
            text = self._remove_puncutation(text)
            offsets.append(len(ids))
            tokens = self._tokenize(text)
            ids.extend(self.lookup(token) for token in ngrams_iterator(tokens, self.ngrams))
        return torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(offsets, dtype=torch.int64)

    def inference(self, data, *args, **kwargs):
        text, offsets = data
        with torch.inference_mode():
            return self.model(text.to(self.device), offsets.to(self.device))

    def postprocess(self, data):
        probs = F.softmax(data, dim=1).tolist()
        return map_class_to_label(probs, self.mapping)
