"""``import lowrank`` leaves the numeric packages (matrix, science, tensor) unimported; they load
on first attribute access (PEP 562)."""

import subprocess
import sys

SCRIPT = """
import sys
import lowrank as lr
lazy = ("lowrank.matrix", "lowrank.science", "lowrank.tensor")
assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]
assert callable(lr.matrix.complete) and callable(lr.tensor.tucker)
assert lr.science.KroneckerGP.__module__ == "lowrank.science.kronecker_gp"
assert all(m in sys.modules for m in lazy)
try:
    lr.structured
except AttributeError as exc:
    assert "has no attribute 'structured'" in str(exc)
else:
    raise AssertionError("lr.structured should not exist")
"""


def test_numeric_packages_are_imported_lazily():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
