"""Built-in `image_segmenter`: the most likely class of every pixel."""

from .vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    """Normalised full-size image in; per request a [H][W] grid of class indices out."""

    def initialize(self, context):
        super().initialize(context)
        from torchvision import transforms

        self.image_processing = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ])

    def postprocess(self, data):
        output = data["out"] if isinstance(data, dict) else data
        return output.argmax(1).tolist()
