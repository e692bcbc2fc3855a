from .metrics import evaluate, per_prefix_nats, routing_health, token_nats

__all__ = ["evaluate", "per_prefix_nats", "routing_health", "token_nats"]
