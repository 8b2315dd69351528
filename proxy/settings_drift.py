"""``counters:``: the periodic check of the store's counters against the ledger, and the seeding of counters
from the ledger after a store loss (proxy/drift.py, proxy/seed.py). Re-exported by proxy/settings.py.

::

    counters:
      reconcile_seconds: 60     # compare budget counters with the ledger this often; 0: never
      seed_check_seconds: 5     # Redis: look for a store loss this often, then seed from the ledger; 0: never
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CounterCheckSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reconcile_seconds: float = Field(default=60.0, ge=0)
    seed_check_seconds: float = Field(default=5.0, ge=0)
