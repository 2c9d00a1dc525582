"""`ts.protocol.otf_message_handler`: streaming partial results, as TorchServe's handlers do."""

import os
from typing import Any, Dict, Sequence


def send_intermediate_predict_response(ret: Sequence[Any], req_id_map: Dict[int, str],
                                       message: str, code: int, context=None) -> None:
    """Sends `ret[idx]` at once as a partial result of request `idx`, for each index of
    `req_id_map`; the handler's return value is the last chunk. As in TorchServe, each chunk's
    status and content type are those the handler set on the context for its request
    (`message` and `code` are not used), and only LOCAL_RANK 0 sends."""
    if str(os.getenv("LOCAL_RANK", 0)) != "0":
        return None
    context.send_intermediate_response(ret, req_id_map)
    return None
