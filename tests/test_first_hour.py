"""What a newcomer meets in the first hour: progress off a terminal, the table's legend, titled
examples, the hint for a model not trained with masks, the planner's exact minimum."""
import json
import time
from pathlib import Path

import pytest

from certmask_core.run import plots, progress
from certmask_core.run.cli import main, one_mask_hint
from certmask_core.run.outputs import results_table

pytest.importorskip("torch")

SUBSET = ["certify", "--data", "fashion-mnist-subset", "--patch", "3", "3", "--k", "1",
          "--mode", "detection", "--limit", "16", "--no-plots"]


def test_progress_lines_off_a_terminal_and_none_when_quiet(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)  # a line at every batch
    assert main([*SUBSET, "--image-batch", "4", "--out", str(tmp_path / "a")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("certify: ")]
    assert lines and lines[-1].startswith("certify: 16/16 images (100%)") and "elapsed" in lines[-1]
    assert any("/16 images" in line and "left" in line for line in lines[:-1])
    assert main([*SUBSET, "--image-batch", "4", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "certify" not in capsys.readouterr().err


def test_progress_lines_are_rare_by_default(capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    with progress.progress_bar(100, "work", per_item=10, item="images") as bar:
        assert isinstance(bar, progress.ProgressLines) and bar.interval == progress.CI_LINE_SECONDS
        bar.update(50)
    assert capsys.readouterr().err == ""  # a quick job prints no line at all
    with progress.ProgressLines(10, "work", interval=0.05) as bar:  # a long batch is not silent
        time.sleep(0.3)
        bar.update(10)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("work: 0/10 (0%), 0 s elapsed") and lines[-1].startswith("work: 10/10 (100%)")
    assert lines.count(lines[-1]) == 1
    with progress.progress_bar(100, "work", enabled=False) as bar:
        bar.update(100)
    assert capsys.readouterr().err == ""


def test_results_table_has_a_legend_and_the_readme_too():
    results = {"patch": [3, 3], "images": 2, "undefended_accuracy": 1.0, "runs": [
        {"strategy": "replicated", "k": 1, "plan": {"num_masks": 16, "lower_bound": 16}, "mode": "detection",
         "certificate": "unanimity", "clean_accuracy": 1.0, "certified_accuracy": 0.5, "alert_rate": 0.0,
         "certificate_passes_per_image": 16.0, "images_per_second": 3.0, "guarantee": "label-or-alert"}]}
    table = results_table(results)
    readme = Path(__file__).resolve().parents[1] / "README.md"
    readme = readme.read_text()
    for column in ("clean acc", "certified acc", "bound", "certificate", "passes/img", "alert rate",
                   "img/s", "guarantee"):
        assert f"**{column}**" in table, column
        assert f"**{column}**" in readme, column


def test_example_titles_name_label_output_and_certificate():
    titles = plots.example_titles([1, -1, 0], ["T-shirt", "Trouser"], labels=[1, 1, 0],
                                  certified=[True, False, False])
    assert titles == ["true Trouser\nout Trouser\ncertified", "true Trouser\nout ALERT\nnot certified",
                      "true T-shirt\nout T-shirt\nnot certified"]
    assert plots.example_titles([5], ["a"]) == ["out 5"]  # no labels, no certificate: the output only


def test_bundled_run_titles_its_examples_and_gives_no_hint(capsys, tmp_path, monkeypatch):
    seen = {}
    original = plots.example_images

    def spy(*args, **kwargs):
        seen.update(kwargs, outputs=args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(plots, "example_images", spy)
    out = tmp_path / "run"
    args = [a for a in SUBSET if a != "--no-plots"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert (out / "examples.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    first = results["runs"][0]
    assert seen["title"].startswith("replicated k=1, detection")
    assert seen["certified"] == first["per_image"]["certified"][:8]
    assert seen["outputs"] == first["per_image"]["output"][:8]
    assert len(seen["labels"]) == 8 and all(0 <= y < 10 for y in seen["labels"])
    assert "note: only" not in capsys.readouterr().out


def test_random_weights_get_the_mask_training_hint(capsys, tmp_path):
    assert main([*SUBSET, "--model", "fashion-cnn", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: only" in out and "certmask train --augment maskset" in out
    assert one_mask_hint(0.9) is None and one_mask_hint(None) is None
    assert one_mask_hint(0.25).startswith("note: only 25% of the one-mask predictions are right")


def test_plan_table_shows_the_bound_and_the_exact_minimum(capsys):
    assert main(["plan", "--image", "28", "28", "--patch", "3", "3", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "lower bound (T2)  exact minimum (T16)" in out
    row = next(line for line in out.splitlines() if " 4x4 " in line).split()
    assert row[:5] == ["351", "4x4", "2.0%", "338", "351"]  # the bound is not reached at 4x4: 338 < 351
