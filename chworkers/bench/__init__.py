"""``chworkers bench``: chworkers' paths measured side by side with plain clients.

``runner`` interleaves the rounds and summarizes them, ``report`` prints the table and
writes the JSON, ``target`` owns the server and the benchmark's database, ``data`` the
rows and sizes; one module per comparison family (``rows``, ``columnar``, ``raw``,
``tasks``, ``lease``, ``daemon``), and ``cli`` the subcommand. This package is the top
layer: it may import everything, and nothing imports it.
"""
