"""Fixtures shared by the deploy tests.

* ``smoke_federation``: starts a local deployment of the smoke preset: teacher0, client0 and client1.
"""

import pytest


@pytest.fixture(scope="session")
def smoke_federation():
    """``start(root, *, extra_nodes=(), **kw)``: certificates for teacher0, client0, client1 (and ``extra_nodes``)
    under ``root / "certs"``, then :func:`start_federation` of the smoke preset in ``root / "run"`` with ``kw``;
    returns its ``(federation, run id)``."""
    from nebula.deploy.local import start_federation
    from nebula.deploy.pki import write_deployment_material

    def start(root, *, extra_nodes=(), **kw):
        material = write_deployment_material(root / "certs", nodes=["teacher0", "client0", "client1", *extra_nodes])
        return start_federation(
            root / "run", material, teacher="teacher0", clients=["client0", "client1"], preset="smoke", **kw
        )

    return start
