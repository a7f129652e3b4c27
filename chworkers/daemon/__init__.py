"""The ingestion daemon (``chworkers run``) on top of the runtime.

Data flows: the ``intake`` (``sources`` that read files, stdin or a generator;
``ingest``, the HTTP push endpoint, which reads bodies with ``pushbody``; ``brokers``)
-> ``framing`` and ``mapping`` -> ``batcher`` (each add answered by a ``ticket``;
``stalls`` says what waits for the spool) -> ``spool`` (one fsync'd ``batchfile`` per
batch) -> ``dispatch`` -> the supervisor's workers -> ClickHouse; ``checkpoints`` keeps
the file sources' positions, ``deadletter`` the rows ClickHouse rejects. ``config``,
``options`` and ``pipelines`` read the TOML file; ``service`` wires it together and runs
it (``totals`` counts what it did, ``statelock`` keeps one daemon per state directory,
``embeddedchild`` runs the embedded ClickHouse); ``tables`` creates target tables in the
background.
"""
