"""The ServerApp process never imports torch or the client package (the layer contracts say so
statically, `lint-imports`; this checks what an import really loads, in a fresh interpreter)."""

import json
import subprocess
import sys

PROBE = """
import json, sys
import nebula.server.app
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft")
                        or m.startswith(("nebula.client", "nebula.learning")))))
"""


def test_importing_the_serverapp_leaves_torch_and_the_client_out():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
