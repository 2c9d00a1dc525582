"""Built-in `object_detector`: boxes with labels and scores above a threshold."""

import torch
from torchvision import transforms

from ts.handler_utils.timer import timed

from .vision_handler import VisionHandler


class ObjectDetector(VisionHandler):
    """Per request a list of `{label: [x1, y1, x2, y2], "score": s}` with score ≥ 0.5."""

    threshold = 0.5
    image_processing = transforms.Compose([transforms.ToTensor()])

    @timed
    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(list(data.to(self.device)), *args, **kwargs)

    def postprocess(self, data):
        results = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes = row["boxes"][keep].tolist()
            labels = row["labels"][keep].tolist()
            scores = row["scores"][keep].tolist()
            detections = []
            for label, box, score in zip(labels, boxes, scores):
                name = self.mapping[str(label)] if self.mapping else str(label)
                detections.append({name: box, "score": score})
            results.append(detections)
        return results
