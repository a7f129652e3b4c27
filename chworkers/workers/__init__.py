"""The runtime: a supervisor, its worker processes and the tasks they run.

``supervisor`` is the public face; ``arbiter`` starts, watches and replaces workers;
``worker`` is the worker process's loop; ``tasks``, ``taskqueue``, ``channel`` and
``outcomes`` carry tasks there and results back; ``middleware`` hooks into both sides.
It knows ClickHouse through ``chworkers.clickhouse`` and knows nothing of pipelines.
"""
