"""Every script under examples/ runs in fast mode and asserts its headline property.

All scripts run in one subprocess (one interpreter start and one torch import on a slow CI
machine); the runner reports every failing script, not just the first.
"""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = ["pcd2vec.py", "equiangular_basis.py", "bw_spd_batchnorm.py", "pfgmpp.py",
           "instance_noise.py", "deep_conjugate_direction.py", "random_grid_neural_process.py"]

RUNNER = """
import runpy, sys, time, traceback
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--fast"]
    t0 = time.time()
    try:
        runpy.run_path(path, run_name="__main__")
    except BaseException:
        failed.append(path)
        traceback.print_exc()
    print(f"[{path}: {time.time() - t0:.1f} s]", flush=True)
    if "torch" in sys.modules:                 # scripts may change torch's global defaults
        sys.modules["torch"].set_default_dtype(sys.modules["torch"].float32)
if failed:
    raise SystemExit("failed: " + ", ".join(failed))
"""


def test_examples_folder_lists_every_script():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


def test_examples_run_in_fast_mode():
    env = {**os.environ, "LOWRANK_FAST": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, *[str(EXAMPLES / s) for s in SCRIPTS]],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
