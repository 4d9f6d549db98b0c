"""Install the repository's role folders as one namespace: folder ``X/`` is the package ``nebula.X``.

The repository keeps its roles at the top (``server/``, ``client/``, ``common/``, ...) while an
installed nebula-fd adds a single top-level name, ``nebula``, to site-packages (an implicit
namespace package: there is no ``nebula/`` folder here to shadow it). Everything else about the
distribution is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

ROLES = ("cli", "common", "learning", "server", "client", "deploy", "simulation")

setup(
    package_dir={f"nebula.{role}": role for role in ROLES},
    packages=[f"nebula.{role}" + (f".{sub}" if sub else "") for role in ROLES for sub in ["", *find_packages(role)]],
)
