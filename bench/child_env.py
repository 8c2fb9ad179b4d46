"""The environment of a timed child process: bytecode cached as an installed package has it.

``pip install`` compiles a package's bytecode, and a normal Python writes it on first import; a machine that sets
``PYTHONDONTWRITEBYTECODE`` (this one does) would make every child compile relu-doctor's modules from source, a
cost users do not pay and one that a plain-forward script (importing fewer of them) pays less of. Children get a
private bytecode cache (``PYTHONPYCACHEPREFIX``, nothing written beside the sources) and each timed command runs
once untimed first, which fills it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="relu-doctor-bench-pycache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def child_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment with bytecode written to the private cache (and ``threads`` torch/OMP threads)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = _CACHE
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env
