import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from certmask_core.run.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_plan_prints_count_bound_and_gap(capsys, tmp_path):
    png = tmp_path / "plan.png"
    assert main(["plan", "--image", "28", "28", "--patch", "3", "3", "--k", "2", "--strategy", "offset",
                 "--masks-per-axis", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "masks 32  lower bound 32  exact minimum 32  gap 0" in out and "coverage min 2" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # distinct masks cannot reach the bound here (T16): the gap is named beside the exact minimum
    assert main(["plan", "--image", "8", "8", "--patch", "1", "1", "--k", "3", "--strategy", "offset",
                 "--mask", "2", "2"]) == 0
    assert "masks 56  lower bound 48  exact minimum 56  gap 8" in capsys.readouterr().out


def test_plan_json_feeds_coverage(capsys, tmp_path):
    assert main(["plan", "--image", "20", "24", "--patch", "3", "4", "--k", "3", "--strategy",
                 "replicated", "--mask", "7", "9", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["summary"]["min_coverage"] >= 3 and len(plan["origins"]) == plan["summary"]["num_masks"]
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(plan))
    assert main(["coverage", str(path), "--patch", "3", "4", "--k", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k_fold"] and report["min_coverage"] >= 3 and report["positions_below_k"] == 0
    # replicated k=3 is exactly 3-fold: asking for 4 fails with exit 1 and names positions
    assert main(["coverage", str(path), "--patch", "3", "4", "--k", "4"]) == 1
    assert "is NOT 4-fold" in capsys.readouterr().out
    # masks smaller than the patch cover nothing (T1 read literally): a coverage verdict, not an error
    assert main(["coverage", str(path), "--patch", "6", "10", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["max_coverage"] == 0 and report["positions_below_k"] == 15 * 15


def test_cli_errors_are_clear(capsys, tmp_path):
    assert main(["plan", "--image", "8", "8", "--patch", "9", "3", "--mask", "9", "9"]) == 2
    assert "patch 9x3 is larger than the image 8x8" in capsys.readouterr().err
    assert main(["coverage", str(tmp_path / "none.json"), "--patch", "2", "2"]) == 2
    assert "mask-set file not found" in capsys.readouterr().err
    assert main(["certify", "--patch", "3", "3", "--data-root", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "Fashion-MNIST test files not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_certify_end_to_end_on_the_bundled_subset(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["certify", "--data", "fashion-mnist-subset", "--patch", "3", "3", "--k", "1", "2",
                 "--strategy", "replicated", "--mode", "detection", "covering_consensus", "recovery",
                 "paper", "--limit", "12", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 12 and len(results["runs"]) == 8
    for run in results["runs"]:
        assert 0 <= run["clean_accuracy"] <= 1 and len(run["per_image"]["output"]) == 12
        if run["mode"] == "paper":
            assert not run["sound"] and "certified_accuracy" not in run
        else:
            assert run["certified_accuracy"] <= run["clean_accuracy"] + 1e-12
    for name in ("results.md", "accuracy_vs_k.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert "UNSOUND" in (out / "results.md").read_text()
    assert not list(tmp_path.glob(".run.partial-*"))


def test_torchrun_two_processes_merge_to_the_single_process_result(tmp_path):
    common = ["certify", "--data", "fashion-mnist-subset", "--patch", "4", "4", "--k", "1", "2",
              "--mode", "detection", "recovery", "--sizes", "2", "4", "--limit", "16", "--quiet",
              "--no-plots"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "certmask_core.run.cli", *common,
                           "--out", str(tmp_path / "dist")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    assert dist["world_size"] == 2 and single["world_size"] == 1
    assert dist["images"] == single["images"] == 16
    for a, b in zip(dist["runs"], single["runs"]):
        assert a["per_image"] == b["per_image"] and a["sizes"] == b["sizes"]
        for key in ("clean_accuracy", "certified_accuracy", "alert_rate", "certificate_passes_per_image"):
            assert a[key] == b[key]


@pytest.mark.parametrize("argv,message", [
    (["--patch", "30", "30"], "patch 30x30 is larger than the image 28x28"),
    (["--patch", "3", "3", "--model", "/no/such.pt"], "model weights not found"),
])
def test_certify_bad_input(capsys, tmp_path, argv, message):
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "2", "--out",
                 str(tmp_path / "x"), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_attack_command_writes_json_and_png(capsys, tmp_path, monkeypatch):
    from certmask_core.run import plots
    from certmask_core.run.datasets import FASHION_MNIST_CLASSES
    names = []
    original = plots.example_images

    def spy(*args, **kwargs):
        names.append(list(args[3]))
        return original(*args, **kwargs)

    monkeypatch.setattr(plots, "example_images", spy)
    out = tmp_path / "attack"
    assert main(["attack", "--data", "fashion-mnist-subset", "--patch", "5", "5", "--k", "1",
                 "--masks-per-axis", "3", "--mode", "covering_consensus", "--limit", "2", "--steps", "3",
                 "--stride", "12", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "attack.json").read_text())
    assert result["mode"] == "covering_consensus" and result["images"] == 2
    assert result["certified_broken"] == 0
    assert "certified_broken" in capsys.readouterr().out
    # Fashion-MNIST's images are titled with its class names, which the data bring (not the attack)
    if any(row["attacked"] for row in result["per_image"]):
        assert names == [list(FASHION_MNIST_CLASSES)] and (out / "attack.png").is_file()


def test_every_option_of_every_command_has_a_help_text():
    from certmask_core.run.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.items() for action in sub._actions
               if action.dest != "help" and not action.help]
    assert missing == [] and set(commands) == {"plan", "coverage", "certify", "attack", "train", "tune"}


def test_certify_several_sizes_from_one_run(tmp_path):
    out = tmp_path / "sizes"
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "30", "--patch", "3", "3",
                 "--k", "2", "--mode", "detection", "plurality", "recovery", "--sizes", "1-4", "2x5",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == [[1, 1], [2, 2], [3, 3], [2, 5], [4, 4]]
    records = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    for run in results["runs"]:
        by_size = {tuple(s["patch"]): s for s in run["sizes"]}
        planned = by_size[(3, 3)]
        assert planned["covered"] and planned["min_coverage"] == 2
        # the planned size's certificate is the run's (plus what a larger certified size implies)
        assert planned["certified_accuracy"] >= run["certified_accuracy"]
        key = f"replicated/k2/{run['mode']}"
        certified = np.array([r["runs"][key]["sizes_certified"] for r in records], bool)
        assert (certified[:, 0] >= certified[:, 2]).all()  # T14(b): 3x3 certified => 1x1 certified
        assert (certified.mean(0) == [s["certified_accuracy"] for s in run["sizes"]]).all()
        squares = np.array([1, 2, 3, 0, 4])
        assert run["per_image"]["largest_certified"] == np.where(certified, squares, 0).max(1).tolist()
        if run["mode"] == "recovery":
            assert run["sizes_passes_per_image"] >= run["certificate_passes_per_image"]
    assert "Certified accuracy by patch size" in (out / "results.md").read_text()
    assert (out / "certified_vs_size.png").stat().st_size > 0


def test_a_multi_size_set_from_plan_is_certified_from_its_file(capsys, tmp_path):
    assert main(["plan", "--image", "28", "28", "--patch", "3", "3", "--patch", "5", "5",
                 "--masks-per-axis", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["origins"]) == 32 and plan["patch_size"] == [5, 5]
    assert [c["min_coverage"] for c in plan["summary"]["union"]["coverage"]] == [2, 1]
    path = tmp_path / "union.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "run"
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "10", "--patch", "5", "5",
                 "--masks", str(path), "--sizes", "3", "5", "--out", str(out), "--quiet", "--no-plots"]) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["strategy"] == "file:union.json" and run["k"] == 1 and run["plan"]["num_masks"] == 32
    assert [s["min_coverage"] for s in run["sizes"]] == [2, 1]
    other = tmp_path / "other.json"
    capsys.readouterr()
    assert main(["plan", "--image", "20", "20", "--patch", "3", "3", "--masks-per-axis", "2", "--json"]) == 0
    other.write_text(capsys.readouterr().out)
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "2", "--patch", "5", "5",
                 "--masks", str(other), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "the mask set is for 20x20 images, the data are 28x28" in capsys.readouterr().err


def test_certify_two_patches_over_mask_pairs(tmp_path):
    out = tmp_path / "two"
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "12", "--patch", "3", "3",
                 "--patches", "2", "--mode", "detection", "plurality", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["patches"] == 2
    for run in results["runs"]:
        assert run["plan"]["groups"] == 120 and run["plan"]["num_masks"] == 16
        assert run["certificate_passes_per_image"] == 120
        assert run["certified_accuracy"] <= run["clean_accuracy"]
    assert "(2 patches)" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--sizes", "5-3"], "--sizes: cannot read '5-3'"),
    (["--sizes", "3xx"], "--sizes: cannot read '3xx'"),
    (["--sizes", "0"], "sizes[0][0] (h) must be >= 1"),
    (["--sizes", "29"], "larger than the image"),
    (["--patches", "0"], "patches must be an integer in [1, 8]"),
    (["--patches", "2", "--mode", "paper"], "'paper' is defined for one patch only"),
])
def test_sizes_and_patches_bad_input(capsys, tmp_path, argv, message):
    assert main(["certify", "--data", "fashion-mnist-subset", "--limit", "2", "--patch", "3", "3",
                 "--out", str(tmp_path / "x"), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_attack_command_with_two_patches_and_a_larger_true_patch(capsys, tmp_path):
    pytest.importorskip("torch")
    common = ["attack", "--data", "fashion-mnist-subset", "--limit", "1", "--patch", "3", "3", "--k", "1",
              "--masks-per-axis", "2", "--steps", "2", "--stride", "13", "--quiet"]
    assert main([*common, "--patches", "2", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "attack.json").read_text())
    assert two["patches"] == 2 and two["num_groups"] == 6 and two["certified_broken"] == 0
    assert main([*common, "--true-patch", "14", "14", "--out", str(tmp_path / "big")]) == 0
    big = json.loads((tmp_path / "big" / "attack.json").read_text())
    assert big["true_patch"] == [14, 14] and big["certified_broken"] == 0
    assert big["true_size_covered"] == (big["true_size_min_coverage"] > 0)
    assert "true_size_covered" in capsys.readouterr().out


@pytest.mark.parametrize("image,patch,per_axis", [(["16", "28", "28"], ["4", "3", "3"], ["2", "3", "3"]),
                                                  (["60"], ["3"], ["3"])])
def test_plan_and_coverage_take_sizes_of_any_dimension(capsys, tmp_path, image, patch, per_axis):
    from certmask_core import MaskSet, coverage_counts_bruteforce
    assert main(["plan", "--image", *image, "--patch", *patch, "--k", "2", "--json"]) == 0  # the planner
    planned = json.loads(capsys.readouterr().out)
    assert planned["summary"]["min_coverage"] >= 2 and len(planned["image_size"]) == len(image)
    assert main(["plan", "--image", *image, "--patch", *patch, "--masks-per-axis", *per_axis, "--json"]) == 0
    path = tmp_path / "masks.json"
    path.write_text(capsys.readouterr().out)
    ms = MaskSet.from_json(path.read_text())
    counts = coverage_counts_bruteforce(ms, tuple(map(int, patch)))
    assert main(["coverage", str(path), "--patch", *patch, "--k", "2", "--json"]) == 1  # a 1-fold set
    report = json.loads(capsys.readouterr().out)
    assert report["positions_below_k"] == int((counts < 2).sum()) > 0
    assert all(counts[tuple(p)] < 2 for p in report["first_positions_below_k"])
    cube = (int(patch[0]),) * len(patch)  # one value: every axis
    uncovered = int(coverage_counts_bruteforce(ms, cube).min() < 1)
    assert main(["coverage", str(path), "--patch", patch[0]]) == uncovered
    positions = "x".join(str(P) for P in np.subtract(ms.image_size, cube) + 1)
    assert f"{positions} patch positions" in capsys.readouterr().out
    assert main(["plan", "--image", *image, "--patch", "3", "3", "3", "3", "--masks-per-axis", "2"]) == 2
    assert "--patch takes one integer or" in capsys.readouterr().err
