"""The ingestion daemon (``chworkers run``) on top of the runtime.

Data flows: ``sources`` and ``ingest`` (HTTP push) -> ``framing`` and ``mapping`` ->
``batcher`` -> ``spool`` (fsync'd) -> ``dispatch`` -> the supervisor's workers ->
ClickHouse; ``deadletter`` keeps the rows ClickHouse rejects. ``config`` and
``pipelines`` read the TOML file; ``service`` wires it together and runs it; ``tables``
creates target tables in the background.
"""
