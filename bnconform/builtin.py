"""Where the built-in catalogue lives: the case files (``cases/``), the
built-in adapters (``adapters/``) and their documented divergences
(``expectations/``).

Two layouts, told apart by where this module itself lives:

* **a checkout** (running from the repository, or an editable install of it):
  the three directories at the top level of the repository, next to the
  ``bnconform/`` package directory. Nothing is copied in this mode, so an edit
  to ``cases/`` takes effect at once.
* **an installed wheel** (``pip install bnconform``, from a wheel or an sdist):
  the build maps the repository's directories into the package, as
  ``bnconform/_builtin/{cases,adapters,expectations}``
  (``pyproject.toml``, ``[tool.hatch.build.targets.wheel.force-include]``);
  they are located with :func:`importlib.resources.files`, and the adapters
  import as the package ``bnconform._builtin.adapters``. No top-level
  ``cases`` or ``adapters`` package is installed.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

#: The package the wheel's copy of the catalogue lives in.
INSTALLED_PACKAGE = "bnconform._builtin"


class BuiltinMissing(RuntimeError):
    """The built-in catalogue is not where this bnconform expects it (a broken
    install, or a ``bnconform`` directory copied without the repository)."""


@dataclass(frozen=True)
class Builtin:
    """The location of the built-in catalogue.

    ``root``: the directory holding ``cases/``, ``adapters/`` and
    ``expectations/`` (file names are shown relative to it:
    ``cases/training.yaml`` in both layouts). ``adapters_package``: the import
    name of the adapters package (``"adapters"`` in a checkout,
    ``"bnconform._builtin.adapters"`` installed). ``installed``: the wheel layout.
    """

    root: Path
    adapters_package: str
    installed: bool

    @property
    def cases(self) -> Path:
        """The built-in case files' directory."""
        return self.root / "cases"

    @property
    def expectations(self) -> Path:
        """The built-in rows' expectations directory."""
        return self.root / "expectations"

    def check(self) -> Builtin:
        """Return ``self``; raise :class:`BuiltinMissing` naming the directory
        when ``cases/`` or ``expectations/`` is not there."""
        for d in (self.cases, self.expectations):
            if not d.is_dir():
                raise BuiltinMissing(f"bnconform's built-in catalogue is missing: {d} is not a directory "
                                     f"(reinstall bnconform, or run it from a complete checkout)")
        return self


def _checkout_root() -> Path | None:
    """The repository this module lives in, when it lives in one (a checkout
    or an editable install): the parent of ``bnconform/`` with ``cases/``,
    ``adapters/__init__.py`` and ``pyproject.toml``."""
    root = Path(__file__).resolve().parents[1]
    marks = (root / "cases").is_dir(), (root / "adapters" / "__init__.py").is_file(), (root / "pyproject.toml").is_file()
    if all(marks):
        return root
    return None


@functools.lru_cache(maxsize=None)
def location() -> Builtin:
    """Where the built-in catalogue is (cached): the checkout this module lives
    in, else the installed package data (``bnconform/_builtin``).

    Never raises: where neither exists the installed location is returned and
    :meth:`Builtin.check` says what is missing.
    """
    root = _checkout_root()
    if root is not None:
        return Builtin(root, "adapters", installed=False)
    data = importlib.resources.files("bnconform").joinpath("_builtin")
    # pytest collects files and the digest reads them: the package must be installed as files (it always
    # is from a wheel); a zipped install has no path.
    path = data if isinstance(data, Path) else Path(str(data))
    return Builtin(path, INSTALLED_PACKAGE + ".adapters", installed=True)
