"""Built-in `image_classifier`: top-5 classes with probabilities per image."""

import torch
import torch.nn.functional as F
from torchvision import transforms

from ts.handler_utils.timer import timed
from ts.utils.util import map_class_to_label

from .vision_handler import VisionHandler


class ImageClassifier(VisionHandler):
    """Resize 256, crop 224, ImageNet normalisation; answers `{label: probability}`.
    Subclasses may replace `image_processing` and `topk` as class attributes."""

    topk = 5
    image_processing = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])

    def set_max_result_classes(self, topk):
        self.topk = topk

    def get_max_result_classes(self):
        return self.topk

    @timed
    def postprocess(self, data):
        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, min(self.topk, ps.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
