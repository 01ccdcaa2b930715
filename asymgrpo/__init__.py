"""asymgrpo: a thin AsymGRPO trainer with vLLM rollouts, built on asymgrpo_kernels.

Entry points: ``asymgrpo train`` / ``asymgrpo eval`` (see ``asymgrpo.cli``), or
``asymgrpo.trainer.train(TrainConfig(...))`` from Python.
"""

import importlib.util as _importlib_util
import os as _os


def _read_version() -> str:
    """The distribution version, from its single source ``asymgrpo_kernels/_version.py``.

    ``from asymgrpo_kernels._version import __version__`` would first run
    ``asymgrpo_kernels/__init__.py``, which imports torch, and this package must stay light
    to import. ``importlib.metadata.version("asymgrpo")`` would be light but can go stale in
    an editable install (it reports the version recorded when the package was installed).
    So: locate the ``asymgrpo_kernels`` folder without importing it (``find_spec`` of a
    top-level name runs none of its code) and execute that small file on its own.
    """
    package = _importlib_util.find_spec("asymgrpo_kernels")
    if package is None or not package.submodule_search_locations:
        raise ImportError("asymgrpo_kernels, installed with asymgrpo, was not found")
    path = _os.path.join(list(package.submodule_search_locations)[0], "_version.py")
    spec = _importlib_util.spec_from_file_location("_asymgrpo_version", path)
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.__version__


__version__: str = _read_version()
