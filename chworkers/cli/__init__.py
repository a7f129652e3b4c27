"""The ``chworkers`` command line: ``main`` assembles the subcommands."""
