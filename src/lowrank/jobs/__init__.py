"""The jobs behind the CLI, one module each: :mod:`~lowrank.jobs.compress` (load, calibrate,
compress, evaluate, save, report), :mod:`~lowrank.jobs.eval` and :mod:`~lowrank.jobs.inspect`.

Each job is one Python call that returns a JSON-ready dict; the CLI only parses and prints.
:mod:`~lowrank.jobs.inputs` holds the text and image data of a job and the checks that run
before any model loads; what runs without ``--method`` is :mod:`lowrank.defaults`.
"""

from .compress import compress_job
from .eval import eval_job
from .inspect import inspect_job

__all__ = ["compress_job", "eval_job", "inspect_job"]
