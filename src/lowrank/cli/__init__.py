"""The ``lowrank`` command line (needs the ``cli`` extra: typer, rich): ``main`` parses options
and prints the results of the jobs of :mod:`lowrank.jobs` (compress, eval, inspect) and of
``report`` and ``env``; ``train`` runs :mod:`lowrank.optim.pretrain`."""
