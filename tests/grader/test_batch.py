"""grade batch: a class graded in parallel, one gradebook row per student, even for broken submissions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from grader.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_class_with_a_good_a_partial_and_a_broken_submission(tmp_path, capsys):
    """Does every student get a row — points per function, or why they could not be graded — and feedback?"""
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    shutil.copytree(ROOT / "samples" / "alice", class_dir / "alice")
    shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / "bob.ipynb")
    (class_dir / "carol").mkdir()
    (class_dir / "carol" / "q_sampler.ipynb").write_text("{ not json")
    out = tmp_path / "gradebook"

    status = main(["batch", str(class_dir), "--out", str(out), "--jobs", "2", "--exercise", "q_sampler"])

    assert status == 1  # carol's notebook could not be graded
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").open())}
    assert set(rows) == {"alice", "bob", "carol"}
    assert float(rows["alice"]["score"]) == 16 and rows["alice"]["q_sample"] == "1"
    assert float(rows["bob"]["score"]) == 0 and rows["bob"]["status"] == "graded"
    assert rows["carol"]["status"] == "not graded" and "invalid JSON" in rows["carol"]["error"]
    alice = json.loads((out / "alice" / "results.json").read_text())
    assert alice["score"] == 16
    assert (out / "bob" / "report.html").is_file()
    assert "2 of 3 submissions graded" in capsys.readouterr().out
