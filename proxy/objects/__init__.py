"""The stateful OpenAI endpoints, isolated by team: reading, listing, cancelling and deleting the responses,
chat completions and conversations that requests through quotagate created, counting input tokens,
reading and deleting one model.

Every id a provider creates for a request (a response's, a chat completion's, stored or not: only the
provider knows; a conversation's, from POST /v1/conversations) is recorded with the caller's team and the
provider (``Ownership.created``). A request naming an id goes to that provider only if the id is the caller
team's; another team's id and one quotagate never saw get the same 404 and no upstream call, so a team
cannot even learn that someone else's id exists. ``previous_response_id`` and ``conversation`` on POST
/v1/responses (and ``previous_response_id`` on /v1/responses/compact and input_tokens) are checked the same
way before anything is forwarded. A deleted id stays its team's: whether it still exists is the provider's
to say, so later requests naming it are forwarded (the list skips it). The list of stored chat completions
is the provider's list with only the caller team's entries kept.

None of this is budgeted (no tokens): each request is counted in ``quotagate_requests`` (operation
``stateful``) and written to the ledger as its own endpoint (``responses.get``, ...), cost 0, not charged.

In request order: ``routes`` (which route a method and path name), ``handlers`` (authenticate, then answer
and record), ``ownership`` (whose each id is), ``target`` (where the request goes), ``relay`` (sent with
the provider's key, the answer passed on), ``listing`` (the list of stored chat completions), ``record``
(the ledger row and the metrics).
"""

from .handlers import StatefulRoutes, model_entry
from .ownership import Ownership
from .routes import match

__all__ = ["Ownership", "StatefulRoutes", "match", "model_entry"]
