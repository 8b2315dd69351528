"""quotagate: a cost-governing gateway for LLM APIs."""

__version__ = "0.1.0"
