"""The client side: talking to ClickHouse, and nothing about workers or pipelines.

Connections and their options (``connection``, ``dsn``), driver exceptions turned into
chworkers' errors (``translate``), host failover (``hosts``), the retry policy
(``retry``), the connection pool and the cross-process leases that share its capacity
(``pool``, ``poolstate``, ``pooloptions``, ``lease``, ``leaseclient``, ``hooks``), and
one insert with its deduplication tokens and Native encoding (``inserts``, ``dedup``,
``native``, and the column-wise encoder ``nativecols`` with its per-type ``nativewriters``).
It imports only the base modules (``chworkers.errors``, ``chworkers.settings``,
``chworkers.backoff``) and ``ops``.
"""
