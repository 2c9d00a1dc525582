"""`ts.handler_utils`: helpers for handlers."""
