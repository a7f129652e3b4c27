"""Broker sources: messages from a broker, exactly once across daemons (docs/brokers.md).

:mod:`~chworkers.daemon.brokers.assembly` turns messages into batches the same way
whoever builds them; :mod:`~chworkers.daemon.brokers.redisstream` is ``source = "redis"``.
"""

#: The pipelines' ``source`` values that are brokers (long-lived, acknowledged on insert).
BROKER_SOURCES = frozenset({"redis"})

__all__ = ["BROKER_SOURCES"]
