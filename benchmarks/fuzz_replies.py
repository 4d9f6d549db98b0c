"""The counts behind docs/benchmarks.md's fuzz table: the 260-round run of tests/server/test_fuzz_replies.py
(seed 0), with what happened to every mutated reply.

Run from the repository root: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fuzz_replies.py``; prints the counts
and writes benchmarks/results/fuzz-replies.json. The test asserts the same run's invariants in CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nebula.common.provenance import provenance  # noqa: E402
from nebula.server.ledger import Ledger  # noqa: E402
from tests.server import test_fuzz_replies as fuzz  # noqa: E402  (the test's own mutators and nodes)


def main() -> dict:
    logging.disable(logging.CRITICAL)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    rng, counter = np.random.default_rng(0), Counter()
    nodes = {i + 1: fuzz.fuzzed_client(i, rng, counter) for i in range(5)}
    nodes[fuzz.TEACHER] = fuzz.fuzzed_teacher(rng, counter)
    folder = Path(tempfile.mkdtemp(prefix="nbl-fuzz-"))
    fed, _ = fuzz.make(folder, nodes, **{"federation.rounds": 260, "federation.min_replies": 1})
    history = fed.run()
    ledger = Ledger(folder / "ledger.sqlite")
    reasons = Counter(reason.split(":")[0] for _, _, reason in ledger.rejections(fed.run_id))
    result = {
        **provenance(),
        "seed": 0,
        "rounds": len(history),
        "round_replies": 5 * len(history),
        "mutated_round_replies": counter["round"],
        "rejected": len(ledger.rejections(fed.run_id)),
        "accepted": len(ledger.contributions(fed.run_id)),
        "mutated_teacher_replies": counter["teach"],
        "teacher_fallbacks": sum(not h["teacher_ok"] for h in history),
        "rejections_by_kind": dict(reasons.most_common()),
    }
    ledger.close()
    out = ROOT / "benchmarks" / "results" / "fuzz-replies.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help only
    main()
