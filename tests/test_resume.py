"""A certify run killed mid-way resumes (--resume) to exactly the results of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from certmask_core import CertMaskError  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.records import read_per_image  # noqa: E402

ARGS = ["certify", "--data", "fashion-mnist-subset", "--limit", "600", "--patch", "3", "3", "--k", "1", "2",
        "--sizes", "2-4", "--mode", "detection", "plurality", "paper", "--no-plots", "--quiet",
        "--image-batch", "50"]


def comparable(results):
    """results.json without timings and without how many images came from a previous process."""
    runs = [{key: value for key, value in run.items() if key != "images_per_second"}
            for run in results["runs"]]
    return {**{k: v for k, v in results.items() if k not in ("runs", "resumed_images")}, "runs": runs}


def test_a_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(ARGS + ["--out", str(whole)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "certmask_core.run.cli", *ARGS, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    per_image = killed / "per_image.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if per_image.is_file() and per_image.read_bytes().count(b"\n") >= 100:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    done = len(read_per_image(per_image))
    assert 100 <= done < 600, f"the kill came too late to test resuming ({done} images done)"
    assert not (killed / "results.json").exists()
    with per_image.open("a") as f:
        f.write('{"id": 599, "label": 9, "undefe')  # a line torn by the kill
    assert main(ARGS + ["--out", str(killed), "--resume"]) == 0
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["resumed_images"] == done
    assert comparable(resumed) == comparable(json.loads((whole / "results.json").read_text()))
    assert read_per_image(per_image) == read_per_image(whole / "per_image.jsonl")
    record = json.loads((killed / "run.json").read_text())
    assert record["resumed_images"] == done and record["fingerprint"]["images"] == 600
    assert record["fingerprint"]["model_sha256"] == json.loads((whole / "run.json").read_text())[
        "fingerprint"]["model_sha256"]


def alive(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs. A killed process's first thread can be a zombie while
    its other threads are still exiting, and they keep its files (and the lock on --out) open."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except OSError:  # the thread ended meanwhile
            continue
    return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_a_killed_torchrun_run_resumes_to_the_uninterrupted_results(tmp_path):
    """Two processes (torchrun) killed mid-way; the same command with --resume, in one process, ends with
    the records and results of one uninterrupted single-process run."""
    args = ARGS[:ARGS.index("--limit") + 1] + ["300"] + ARGS[ARGS.index("--limit") + 2:]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(args + ["--out", str(whole)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "certmask_core.run.cli", *args, "--out",
                             str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    shards = [killed / f"per_image.rank-{rank}.jsonl" for rank in (0, 1)]
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if all(shard.is_file() and shard.read_bytes().count(b"\n") >= 50 for shard in shards):
            break
        time.sleep(0.01)
    doomed = [proc.pid, *descendants(proc.pid)]  # every process of the run, as a lost machine would
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL is delivered asynchronously: the lock on --out goes only when its holder is gone
    while time.time() < deadline and any(alive(pid) for pid in doomed):
        time.sleep(0.01)
    done = sum(len(read_per_image(shard)) for shard in shards)
    assert 100 <= done < 300, f"the kill came too late to test resuming ({done} images done)"
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["resumed_images"] >= done - 2 * 50  # unsealed lines (one batch per process) are redone
    assert comparable(resumed) == comparable(json.loads((whole / "results.json").read_text()))
    assert read_per_image(killed / "per_image.jsonl") == read_per_image(whole / "per_image.jsonl")
    assert not list(killed.glob("per_image.rank-*"))


def test_resume_refuses_other_settings_and_foreign_folders(tmp_path, capsys):
    out = tmp_path / "run"
    short = ARGS[:ARGS.index("--limit") + 1] + ["40"] + ARGS[ARGS.index("--limit") + 2:]
    assert main(short + ["--out", str(out)]) == 0
    assert main([a if a != "2" else "3" for a in short] + ["--out", str(out), "--resume"]) == 2
    assert "holds a run with other settings (differs in ['config', 'masks'])" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(short + ["--out", str(foreign)]) == 2
    assert "holds no results.json; not overwriting it" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(CertMaskError, match="line 2 is not a per-image record"):
        read_per_image(bad)


def test_resume_refuses_data_edited_in_place(tmp_path):
    """The run's fingerprint covers the data's bytes: an edit that keeps the file's size is seen."""
    import numpy as np
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (30, 28, 28), np.uint8), labels=rng.integers(0, 10, 30))
    args = ["certify", "--data", str(data), "--patch", "3", "3", "--quiet", "--no-plots",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    with np.load(data) as stored:
        images, labels = stored["images"].copy(), stored["labels"]
    images[3] = 255 - images[3]
    np.savez(data, images=images, labels=labels)
    assert main(args + ["--resume"]) == 2


def test_what_a_killed_run_leaves_besides_its_files_does_not_block_the_next(tmp_path):
    out = tmp_path / "run"
    (out / ".partial-abc").mkdir(parents=True)  # killed inside an atomic write
    (out / ".certmask.lock").write_text("")
    short = ARGS[:ARGS.index("--limit") + 1] + ["20"] + ARGS[ARGS.index("--limit") + 2:]
    assert main(short + ["--out", str(out)]) == 0
