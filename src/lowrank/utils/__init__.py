"""Small shared helpers that import nothing of lowrank above :mod:`lowrank.errors`: argument
checks (``checks``), the environment of a bug report (``env``), lazy module attributes
(``lazy``), stage messages and progress bars on stderr (``log``, ``progress``), and SIGINT /
SIGTERM as exceptions (``signals``)."""
