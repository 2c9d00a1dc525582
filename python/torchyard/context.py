"""The `context` object handlers receive, with TorchServe's `ts.context.Context` surface."""

import logging

log = logging.getLogger("torchyard.context")


class RequestProcessor:
    """One request's headers, as TorchServe's RequestProcessor exposes them."""

    def __init__(self, headers):
        self._headers = {k.lower(): v for k, v in headers}

    def get_request_property(self, key):
        return self._headers.get(key.lower())

    def get_request_properties(self):
        return dict(self._headers)


class Metrics:
    """Accepts TorchServe's metric calls from handlers and logs them at debug level."""

    def __init__(self):
        self.cache = {}

    def _record(self, kind, name, value, *args, **kwargs):
        self.cache[name] = value
        log.debug("metric %s %s=%s", kind, name, value)

    def add_time(self, name, value, *args, **kwargs):
        self._record("time", name, value)

    def add_counter(self, name, value, *args, **kwargs):
        self._record("counter", name, value)

    def add_size(self, name, value, *args, **kwargs):
        self._record("size", name, value)

    def add_percent(self, name, value, *args, **kwargs):
        self._record("percent", name, value)

    def add_metric(self, name, value, *args, **kwargs):
        self._record("metric", name, value)

    def get_metric(self, name, *args, **kwargs):
        return self.cache.get(name)


class Context:
    """Model-level facts plus the current batch's request ids, headers and response settings."""

    def __init__(self, model_name, model_dir, manifest, batch_size, gpu_id, server_name,
                 server_version, limit_max_image_pixels=True, model_yaml_config=None):
        self.model_name = model_name
        self.manifest = manifest
        self.model_yaml_config = model_yaml_config or {}
        self.system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": batch_size,
            "server_name": server_name,
            "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.metrics = Metrics()
        self.start_batch([])

    def start_batch(self, requests):
        """Resets per-request state for a new batch of protocol request dicts."""
        self.request_ids = {i: r["id"] for i, r in enumerate(requests)}
        self.request_processor = [RequestProcessor(r.get("headers", ())) for r in requests]
        self._status = {}
        self._content_type = {}
        self._response_headers = {}

    def get_request_id(self, idx=0):
        return self.request_ids.get(idx)

    def get_request_header(self, idx, key):
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx):
        return self.request_processor[idx].get_request_properties()

    def set_response_status(self, code=200, phrase="", idx=0):
        self._status[idx] = (code, phrase)

    def get_response_status(self, idx=0):
        return self._status.get(idx, (200, ""))[0]

    def set_response_content_type(self, idx, value):
        self._content_type[idx] = value

    def get_response_content_type(self, idx):
        return self._content_type.get(idx)

    def set_response_header(self, idx, key, value):
        self._response_headers.setdefault(idx, {})[key] = value

    def get_response_headers(self, idx):
        return self._response_headers.get(idx, {})

    def response_for(self, idx):
        """(status, reason, content type override) of request `idx`."""
        code, phrase = self._status.get(idx, (200, ""))
        return code, phrase or None, self._content_type.get(idx)
