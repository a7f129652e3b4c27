"""Broker sources: messages from a broker, exactly once across daemons (docs/brokers.md).

Broker-neutral: :mod:`~chworkers.daemon.brokers.assembly` turns messages into batches the
same way whoever builds them; :mod:`~chworkers.daemon.brokers.common` is what the daemon
asks of every broker source; :mod:`~chworkers.daemon.brokers.trouble` is what a source
tells the daemon's health while its broker does not answer;
:mod:`~chworkers.daemon.brokers.wiring` makes a pipeline's source and asks it about its
batches. ``source = "redis"``: :mod:`~chworkers.daemon.brokers.redisstream` (the source's
logic; its batching in :mod:`~chworkers.daemon.brokers.redisbatches`) over
:mod:`~chworkers.daemon.brokers.redisgroup` (the commands of a stream's
consumer group; the manifests' in :mod:`~chworkers.daemon.brokers.redismanifests`),
:mod:`~chworkers.daemon.brokers.redisscripts` (its Lua scripts) and
:mod:`~chworkers.daemon.brokers.redisclient` (the connection). ``source = "nats"``:
:mod:`~chworkers.daemon.brokers.natsstream` (the source's logic) over
:mod:`~chworkers.daemon.brokers.natsmanifests` (the manifests' key-value key) and
:mod:`~chworkers.daemon.brokers.natsclient` (nats-py on its own event loop).
"""

#: The pipelines' ``source`` values that are brokers (long-lived, acknowledged on insert).
BROKER_SOURCES = frozenset({"redis", "nats"})

__all__ = ["BROKER_SOURCES"]
