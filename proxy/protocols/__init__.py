"""The wire protocols quotagate governs, one adapter module each behind ``base.Adapter``.

``ENDPOINTS`` maps every governed route to its endpoint (and so to its adapter); routes.py dispatches on it
and the pipeline asks the endpoint's adapter, never the endpoint's name. Adding a protocol is adding a
module here (an ``Adapter`` subclass and its endpoints in a ``ROUTES`` dict) and its ``ROUTES`` below.
"""

from __future__ import annotations

from ..parse import Endpoint
from . import anthropic_messages, openai_chat, openai_completions, openai_embeddings, openai_responses
from .base import Adapter

ENDPOINTS: dict[str, Endpoint] = {
    **openai_chat.ROUTES,
    **openai_completions.ROUTES,
    **openai_embeddings.ROUTES,
    **openai_responses.ROUTES,
    **anthropic_messages.ROUTES,
}

__all__ = ["ENDPOINTS", "Adapter", "Endpoint"]
