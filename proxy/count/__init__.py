"""Prompt tokens, counted offline before a request is forwarded (no I/O).

Rules (conventions.md section 4):

* Chat: the cookbook's ``num_tokens_from_messages`` for every model: 3 tokens per message, the tokens of
  every rendered value (role included), +1 per ``name``, +3 reply primer. Exact for the cookbook vectors
  (129 cl100k / 124 o200k). List content is walked part by part (sum of the parts, no cross-part merges);
  ``tool_calls`` / legacy ``function_call`` count their function name + arguments; ``tool_call_id`` is
  not rendered to the model and is not counted.
* Tools: the cookbook's ``num_tokens_for_tools`` constants (func_init 7 for the o200k family, 10 for
  cl100k). Schema parts the cookbook does not model (nested objects, arrays, non-function tools) are
  counted as their JSON text and make the estimate inexact.
* Images: tile formula (gpt-4o family, o1/o3, gpt-4o-mini constants) or patch formula (gpt-4.1-mini/nano,
  o4-mini, gpt-5 mini/nano). Width/height are read from ``data:`` URL headers (PNG/JPEG/GIF/WebP, stdlib
  only); remote URLs and unreadable data assume 1024x1024 high detail and make the estimate inexact, as
  do patch models, unverified constants, audio and files.
* Responses API: same overhead rule; exact only for plain message items (instructions, string input,
  messages with text parts) -- function calls, their outputs, reasoning and other items are estimates.
* Completions / embeddings: plain token counts, token-id arrays count their length.
* Shapes the API does not define (``tools: 42``, a message that is a string, ``instructions`` that are
  not text...) are counted as their JSON text and make the estimate inexact: the provider decides
  whether the request is valid; quotagate only needs a number to reserve.
* Input out of sight (no prompt field, a stored conversation): ``Estimate.with_unseen`` reserves up to
  a bound the policy picks, inexact; settlement then takes the provider's usage.
* Unknown tokenizer (no configured encoding and none inferable from the model name, or an encoding that
  is not bundled): counted with o200k_base and marked ``exact=False`` -- a real BPE count is a closer
  guess for modern tokenizers than chars/4, and it shares cache entries with o200k models.

Every message is counted once: an LRU keyed by everything that affects its count (encoding, image
profile, the message itself) and bounded by the total characters/bytes of its keys. A conversation
re-sent with one new message costs one hash + compare per old message and the encoding of the new one.

Modules, by what they count: ``images`` (image tokens from a data URL's header), ``messages`` (chat messages
and Responses items), ``tools`` (function definitions); ``cache`` (the LRU), ``counter`` (the Counter that
plans, caches and sums).
"""

from .cache import CacheStats
from .counter import (
    FALLBACK_ENCODING,
    REPLY_PRIMER,
    THREAD_THRESHOLD_CHARS,
    Counter,
    Estimate,
    Parts,
    count_chat_parts,
)
from .images import (
    ImageProfile,
    data_url_image_size,
    image_profile_for_model,
    image_size,
    patch_image_tokens,
    tile_image_tokens,
)
from .messages import TOKENS_PER_MESSAGE, TOKENS_PER_NAME

__all__ = [
    "FALLBACK_ENCODING",
    "REPLY_PRIMER",
    "THREAD_THRESHOLD_CHARS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "CacheStats",
    "Counter",
    "Estimate",
    "ImageProfile",
    "Parts",
    "count_chat_parts",
    "data_url_image_size",
    "image_profile_for_model",
    "image_size",
    "patch_image_tokens",
    "tile_image_tokens",
]
