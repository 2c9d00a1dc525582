"""`ts.handler_utils.utils`: where TorchServe 0.10+ exports its streaming helper."""

from ts.protocol.otf_message_handler import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
