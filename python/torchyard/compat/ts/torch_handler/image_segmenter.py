"""Built-in `image_segmenter`: the most likely class of every pixel, with its probability."""

import torch
from torchvision import transforms

from .vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    """Resize 256, crop 224, ImageNet normalisation; per request a [224][224] grid of
    `[class, probability]` pairs (the class as a float, as TorchServe answers)."""

    image_processing = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])

    def postprocess(self, data):
        output = data["out"] if isinstance(data, dict) else data
        probs, classes = torch.softmax(output, dim=1).max(dim=1)
        return torch.stack([classes.to(probs.dtype), probs], dim=3).tolist()
