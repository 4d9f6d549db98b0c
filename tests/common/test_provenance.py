"""Where a benchmark figure came from: commit, uncommitted changes, command."""

from __future__ import annotations

import re
import subprocess

import pytest

from nebula.common.provenance import REPO, provenance


def test_in_this_checkout_the_commit_is_heads_full_hash():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    found = provenance(["benchmarks/x.py", "--out", "a b.json"])
    if head.returncode != 0:  # an installed copy without .git: nothing to compare against
        assert found["commit"] == "unknown"
        return
    assert re.fullmatch(r"[0-9a-f]{40}", found["commit"]) and found["commit"] == head.stdout.strip()
    assert isinstance(found["uncommitted_changes"], bool)
    assert found["command"] == "python benchmarks/x.py --out 'a b.json'"  # pastes back as it ran


def test_outside_git_it_says_unknown(tmp_path):
    found = provenance([], cwd=tmp_path)
    assert found["commit"] == "unknown" and found["uncommitted_changes"] is None and found["command"] == "python"


def test_uncommitted_changes_to_tracked_files_are_flagged(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "untracked.txt").write_text("not counted\n")
    assert provenance([], cwd=tmp_path)["uncommitted_changes"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert provenance([], cwd=tmp_path)["uncommitted_changes"] is True


def test_stored_result_resumes_only_the_same_settings(tmp_path):
    import json

    from nebula.common.provenance import StoredResultMismatch, stored_result

    path = tmp_path / "result.json"
    assert stored_result(path, {"seed_size": 100}) is None
    path.write_text(json.dumps({"settings": {"seed_size": 100, "epochs": 5}, "cells": {"a": 1}}))
    assert stored_result(path, {"seed_size": 100})["cells"] == {"a": 1}
    with pytest.raises(StoredResultMismatch, match=r"'epochs': \(5, 3\)"):
        stored_result(path, {"seed_size": 100, "epochs": 3})
