"""Built-in `image_classifier`: top-5 classes with probabilities per image."""

import torch.nn.functional as F
import torch

from ts.utils.util import map_class_to_label

from .vision_handler import VisionHandler


def _transforms():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class ImageClassifier(VisionHandler):
    """Resize 256, crop 224, ImageNet normalisation; answers `{label: probability}`."""

    topk = 5

    def initialize(self, context):
        super().initialize(context)
        self.image_processing = _transforms()

    def set_max_result_classes(self, topk):
        self.topk = topk

    def get_max_result_classes(self):
        return self.topk

    def postprocess(self, data):
        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, min(self.topk, ps.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
