"""The ``lowrank`` command line (needs the ``cli`` extra: typer, rich)."""
