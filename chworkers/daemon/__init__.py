"""The ingestion daemon (``chworkers run``) on top of the runtime.

Data flows: the ``intake`` (``sources`` that read files, stdin or a generator, and
``ingest``, the HTTP push endpoint) -> ``framing`` and ``mapping`` -> ``batcher`` (each
add answered by a ``ticket``; ``stalls`` what waits for the spool) -> ``spool`` (fsync'd ``batchfile`` s) -> ``dispatch`` ->
the supervisor's workers -> ClickHouse; ``checkpoints`` keeps the file sources'
positions, ``deadletter`` the rows ClickHouse rejects. ``config``, ``options`` and
``pipelines`` read the TOML file; ``service`` wires it together and runs it (``totals``
counts what it did, ``statelock`` keeps one daemon per state directory); ``tables``
creates target tables in the background.
"""
