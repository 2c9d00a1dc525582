"""`VisionHandler`: decodes images (raw bytes, base64 strings or pixel lists) into a batch."""

import base64
import io
from abc import ABC

import torch

from .base_handler import BaseHandler


class VisionHandler(BaseHandler, ABC):
    """Base of the image handlers; subclasses set `image_processing`."""

    image_processing = None

    def initialize(self, context):
        super().initialize(context)
        from PIL import Image

        if not context.system_properties.get("limit_max_image_pixels"):
            Image.MAX_IMAGE_PIXELS = None

    def preprocess(self, data):
        from PIL import Image

        images = []
        for row in data:
            image = row.get("data")
            if image is None:
                image = row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image)).convert("RGB")
                image = self.image_processing(image)
            else:
                image = torch.FloatTensor(image)
            images.append(image)
        return torch.stack(images).to(self.device)
