"""`VisionHandler`: decodes images (raw bytes, base64 strings or pixel lists) into a batch,
and explains with Captum's Integrated Gradients."""

import base64
import io
import logging
from abc import ABC

import torch

from ts.handler_utils.timer import timed

from .base_handler import BaseHandler
from ._captum import captum_attr

logger = logging.getLogger(__name__)


class VisionHandler(BaseHandler, ABC):
    """Base of the image handlers; subclasses set `image_processing`. Images keep the mode
    they were encoded in (a grey image stays one channel), as in TorchServe."""

    image_processing = None

    def initialize(self, context):
        super().initialize(context)
        from PIL import Image

        self._ig = None
        if not context.system_properties.get("limit_max_image_pixels"):
            Image.MAX_IMAGE_PIXELS = None

    @property
    def ig(self):
        """Captum's IntegratedGradients over the model, made on first use."""
        if getattr(self, "_ig", None) is None:
            self._ig = captum_attr().IntegratedGradients(self.model)
        return self._ig

    @ig.setter
    def ig(self, value):
        self._ig = value

    @timed
    def preprocess(self, data):
        from PIL import Image

        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytes, bytearray)):
                image = self.image_processing(Image.open(io.BytesIO(image)))
            else:
                image = torch.FloatTensor(image)
            images.append(image)
        return torch.stack(images).to(self.device)

    def get_insights(self, tensor_data, _, target=0):
        """Integrated Gradients attributions of the input (15 steps), shaped as the input."""
        logger.info("input shape %s", tuple(tensor_data.shape))
        return self.ig.attribute(tensor_data, target=target, n_steps=15).tolist()
