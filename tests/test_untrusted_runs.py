"""The run layer trusts nothing a file in --out, a mask-set file or the command line says.

Each test reproduces a way the run layer once gave a silently wrong answer, lost results, or let two
runs mix theirs, and pins the refusal (a one-line ``certmask: error:`` with exit status 2) or the
correct result.
"""
import hashlib
import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from certmask_core.run import experiment  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.datasets import FASHION_MNIST_CLASSES, load_bundled_subset  # noqa: E402
from certmask_core.run.outputs import LOCK_FILE, locked_out_dir  # noqa: E402
from certmask_core.run.records import SEAL_FILE, read_per_image  # noqa: E402
from tests.strategies import deadline  # noqa: E402

RUN = ["certify", "--data", "fashion-mnist-subset", "--limit", "12", "--patch", "3", "3", "--k", "1", "2",
       "--mode", "detection", "plurality", "recovery", "paper", "--sizes", "2-4", "--no-plots", "--quiet"]


def one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    assert err.startswith("certmask: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# bundled-subset images the bundled model gets wrong, alerts on, or gets right without a certificate
HARD_IMAGES = [17, 21, 23, 40, 49, 67, 68, 98, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete run of 12 images (every resumed record is recomputed by the spot check) and the
    arguments that made it."""
    folder = tmp_path_factory.mktemp("runs")
    images, labels, _ = load_bundled_subset()
    np.savez(folder / "hard.npz", images=images[HARD_IMAGES], labels=labels[HARD_IMAGES])
    args = RUN + ["--data", str(folder / "hard.npz")]
    assert main(args + ["--out", str(folder / "done")]) == 0
    return folder / "done", args


def copy_run(finished, tmp_path):
    """A copy of the finished run's record and per-image results, and the arguments to resume it."""
    done, args = finished
    out = tmp_path / "run"
    out.mkdir(parents=True)
    for name in ("run.json", "per_image.jsonl", SEAL_FILE):
        (out / name).write_bytes((done / name).read_bytes())
    return out, args + ["--out", str(out), "--resume"]


def edit_records(out, edit, reseal=True):
    """Edit the per-image records; ``reseal`` rewrites the seal too, as a forger who knows it would."""
    path = out / "per_image.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records = edit(records) or records
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text)
    if reseal:
        seal = {"lines": len(records), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        (out / SEAL_FILE).write_text(json.dumps(seal))


def test_an_untouched_run_resumes_to_its_own_results(finished, tmp_path):
    out, resume = copy_run(finished, tmp_path)
    assert main(resume) == 0
    done = finished[0]
    assert read_per_image(out / "per_image.jsonl") == read_per_image(done / "per_image.jsonl")
    got, want = (json.loads((o / "results.json").read_text()) for o in (out, done))
    assert [r["certified_accuracy"] for r in got["runs"] if r["sound"]] == [
        r["certified_accuracy"] for r in want["runs"] if r["sound"]]


def _flip_all(records):
    """Certify every image under detection, as a hand edit would."""
    for r in records:
        run = r["runs"]["replicated/k1/detection"]
        run.update(certified=True, claim_holds=True, below_margin=False)


def _flip_consistently(records):
    """The subtle forgery: certify only images whose output already is the label, keeping every field
    consistent; only recomputing them can tell."""
    flipped = 0
    for r in records:
        for key, run in r["runs"].items():
            if not key.endswith("paper") and run["output"] == r["label"] and not run["certified"]:
                run.update(certified=True, claim_holds=True, below_margin=False)
                flipped += 1
    assert flipped, "the forgery needs an image that a mode did not certify but got right"


@pytest.mark.parametrize("edit,message", [
    (_flip_all, "is certified with output"),
    (_flip_consistently, "differs from its recomputation"),
    (lambda rs: rs.append(dict(rs[0])), "repeats image id 0"),
    (lambda rs: [{**rs[0], "id": 12}] + rs[1:], "outside the 12 images"),
    (lambda rs: [{**rs[0], "label": (rs[0]["label"] + 1) % 10}] + rs[1:], "the data say"),
    (lambda rs: [{k: v for k, v in rs[0].items() if k != "undefended"}] + rs[1:], "has the fields"),
    (lambda rs: [{**rs[0], "runs": {}}] + rs[1:], "holds the runs"),
    (lambda rs: [{**rs[0], "id": "0"}] + rs[1:], "is not an integer"),
    (lambda rs: rs.__setitem__(0, {**rs[0], "runs": {**rs[0]["runs"], "replicated/k1/paper": {
        **rs[0]["runs"]["replicated/k1/paper"], "certified": True}}}), "is certified with output"),
    (lambda rs: rs.__setitem__(0, {**rs[0], "runs": {**rs[0]["runs"], "replicated/k1/plurality": {
        **rs[0]["runs"]["replicated/k1/plurality"], "certificate_passes": 2**40}}}), "certificate_passes"),
    (lambda rs: rs.__setitem__(0, {**rs[0], "runs": {**rs[0]["runs"], "replicated/k1/detection": {
        **rs[0]["runs"]["replicated/k1/detection"], "sizes_certified": [0, 0]}}}), "sizes_certified"),
])
def test_resume_refuses_records_that_do_not_add_up(finished, tmp_path, capsys, edit, message):
    out, resume = copy_run(finished, tmp_path)
    edit_records(out, edit)
    assert main(resume) == 2
    one_error_line(capsys, message)
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("edit", [_flip_all, _flip_consistently, lambda rs: rs.reverse()])
def test_an_edit_without_the_seal_is_refused_whatever_it_changes(finished, tmp_path, capsys, edit):
    out, resume = copy_run(finished, tmp_path)
    edit_records(out, edit, reseal=False)
    assert main(resume) == 2
    one_error_line(capsys, "differs from what the run wrote", SEAL_FILE)


def test_lines_after_the_seal_are_recomputed(finished, tmp_path, capsys, monkeypatch):
    """A kill between a batch's lines and its seal leaves unsealed lines: they are all recomputed,
    whatever the random sample draws."""
    out, resume = copy_run(finished, tmp_path)
    monkeypatch.setattr(experiment, "_RESUME_SPOT_CHECKS", 0)
    edit_records(out, _flip_consistently, reseal=False)
    (out / SEAL_FILE).write_text(json.dumps({"lines": 0, "sha256": hashlib.sha256(b"").hexdigest()}))
    assert main(resume) == 2
    one_error_line(capsys, "differs from its recomputation")
    out2, resume2 = copy_run(finished, tmp_path / "again")
    (out2 / SEAL_FILE).write_text(json.dumps({"lines": 3, "sha256": hashlib.sha256(b"".join(
        line + b"\n" for line in (out2 / "per_image.jsonl").read_bytes().split(b"\n")[:3])).hexdigest()}))
    assert main(resume2) == 0


def test_sizes_certified_must_be_monotone(finished, tmp_path, capsys):
    def certify_only_the_largest(records):
        for r in records:
            for run in r["runs"].values():
                if run["output"] == r["label"] and run.get("sizes_certified") == [0, 0, 0]:
                    run["sizes_certified"] = [0, 0, 1]
                    return
        raise AssertionError("no image left uncertified at every size")
    out, resume = copy_run(finished, tmp_path)
    edit_records(out, certify_only_the_largest)
    assert main(resume) == 2
    one_error_line(capsys, "but not a smaller one inside it")


@pytest.mark.parametrize("garbage", [b"\xff\xfe not utf-8\n", b'{"id": 3, "label": 1\n', b"[1, 2]\n",
                                     b'{"id": 1e400}\n', b"[" * 100000 + b"\n"])
def test_unreadable_lines_are_named(tmp_path, garbage):
    path = tmp_path / "per_image.jsonl"
    path.write_bytes(b'{"id": 0}\n' + garbage + b'{"id": 2}\n')
    with pytest.raises(experiment.CertMaskError, match="line 2 is not a per-image record"):
        read_per_image(path)


def test_a_torn_or_missing_run_record_stops_resume_with_a_named_error(finished, tmp_path, capsys):
    out, resume = copy_run(finished, tmp_path)
    (out / "run.json").write_text((out / "run.json").read_text()[:100])
    assert main(resume) == 2
    one_error_line(capsys, "cannot read the run record", "run.json")
    (out / "run.json").unlink()
    assert main(resume) == 2
    one_error_line(capsys, "holds per-image results but no run.json")


def test_run_json_is_replaced_whole(finished, tmp_path, monkeypatch):
    """A kill while run.json is written leaves the old file or the new one, never a torn one."""
    out, _ = copy_run(finished, tmp_path)
    before = (out / "run.json").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiment.json, "dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        experiment.write_json_atomically(out / "run.json", {"new": 1})
    assert (out / "run.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["per_image.jsonl", SEAL_FILE, "run.json"]


def test_a_previous_run_needs_resume_or_overwrite(finished, tmp_path, capsys):
    out, resume = copy_run(finished, tmp_path)
    lines = (out / "per_image.jsonl").read_text()
    assert main(resume[:-1]) == 2
    one_error_line(capsys, "holds a previous run", "--resume", "--overwrite")
    assert (out / "per_image.jsonl").read_text() == lines  # not emptied
    assert main(resume + ["--overwrite"]) == 2
    one_error_line(capsys, "give one")
    (out / "notes.txt").write_text("mine")
    assert main(resume[:-1] + ["--overwrite", "--limit", "3"]) == 0
    assert len(read_per_image(out / "per_image.jsonl")) == 3
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes the run's files only


def test_two_runs_on_one_folder_at_once(tmp_path, capsys):
    out = tmp_path / "busy"
    with locked_out_dir(out):  # as another process's run holds it
        assert main(RUN + ["--out", str(out)]) == 2
        one_error_line(capsys, "another certmask run is writing to")
    assert (out / LOCK_FILE).is_file() and not (out / "per_image.jsonl").exists()
    assert main(RUN + ["--out", str(out), "--limit", "2"]) == 0  # the lock went with its holder


def test_the_lock_holds_across_processes(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from certmask_core.run.experiment import locked_out_dir\n"
        f"with locked_out_dir(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(experiment.CertMaskError, match="another certmask run"):
            with locked_out_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locked_out_dir(out):
        pass


def test_a_figure_that_fails_never_loses_the_results(tmp_path, capsys, monkeypatch):
    from certmask_core.run import plots

    def exhausted(*args, **kwargs):
        raise MemoryError("one entry per class up to the largest label")
    monkeypatch.setattr(plots, "accuracy_vs_k", exhausted)
    out = tmp_path / "run"
    assert main([a for a in RUN if a != "--no-plots"] + ["--out", str(out), "--limit", "3"]) == 0
    assert json.loads((out / "results.json").read_text())["images"] == 3
    assert "figures were not drawn (MemoryError" in capsys.readouterr().err
    assert not list(out.glob(".partial-*"))


def _npz(tmp_path, labels, images=None):
    subset, _, _ = load_bundled_subset()
    path = tmp_path / "data.npz"
    np.savez(path, images=subset[:len(labels)] if images is None else images, labels=np.asarray(labels))
    return str(path)


@pytest.mark.parametrize("label", [10, 11, 2**31 - 1])
def test_labels_outside_the_models_classes_are_refused(tmp_path, capsys, label):
    data = _npz(tmp_path, [1, label, 3])
    for command in (RUN, ["attack", "--patch", "3", "3", "--steps", "1", "--quiet"]):
        assert main(command + ["--data", data, "--out", str(tmp_path / command[0])]) == 2
        one_error_line(capsys, f"{label}", "[0, 10)")


def test_results_record_the_models_class_count(tmp_path):
    out = tmp_path / "run"
    assert main(RUN + ["--data", _npz(tmp_path, [0, 1, 1]), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 10  # the model's, not the largest label + 1


def _folder(tmp_path, classes, per_class=2):
    from PIL import Image
    subset, labels, _ = load_bundled_subset()
    root = tmp_path / "folder"
    for name in classes:
        (root / name).mkdir(parents=True)
        label = FASHION_MNIST_CLASSES.index(name.replace("_", "/"))
        for i in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(subset[i]).save(root / name / f"{i}.png")
    return root


def test_a_folder_missing_classes_is_refused_until_they_are_named(tmp_path, capsys):
    names = [c.replace("/", "_") for c in FASHION_MNIST_CLASSES]
    # two classes have no image, as in the 20 CIFAR-10 samples: the others' labels would shift
    root = _folder(tmp_path, names[:3] + names[5:])
    args = RUN[:1] + RUN[5:] + ["--data", str(root), "--mode", "detection"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "the data name 8 classes", "10 logits", "--classes")
    assert main(args + ["--classes", *names, "--out", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["classes"] == names
    assert json.loads((tmp_path / "b" / "run.json").read_text())["fingerprint"]["classes"] == names
    records = read_per_image(tmp_path / "b" / "per_image.jsonl").values()
    assert {names[r["label"]] for r in records} == set(names[:3] + names[5:])
    assert all(r["name"].split("/")[0] == names[r["label"]] for r in records)
    # the bundled model is right on most of them: the labels mean what the model means
    assert results["undefended_accuracy"] >= 0.75
    listed = tmp_path / "classes.txt"
    listed.write_text("\n".join(names) + "\n")
    assert main(args + ["--classes", str(listed), "--out", str(tmp_path / "c")]) == 0
    assert main(args + ["--classes", *names[:9], names[0], "--out", str(tmp_path / "d")]) == 2
    one_error_line(capsys, "names a class twice")


def test_a_mask_set_files_description_is_never_used(tmp_path, capsys):
    """A file's spec (k, mask size) and patch size are descriptions: results, bounds and covering
    consensus's decisions come from the rectangles and this run's patch alone."""
    assert main(["plan", "--image", "28", "28", "--patch", "3", "3", "--k", "2", "--json"]) == 0
    honest = json.loads(capsys.readouterr().out)
    lying = {**honest, "spec": {**honest["spec"], "k": 6, "mask_size": [20, 20]}, "patch_size": [1, 1]}
    bare = {key: honest[key] for key in ("image_size", "origins", "sizes")}
    outputs = {}
    for name, content in (("lying", lying), ("bare", bare)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
        out = tmp_path / name
        assert main(RUN[:1] + RUN[5:8] + ["--data", "fashion-mnist-subset", "--limit", "30", "--masks",
                                          str(tmp_path / f"{name}.json"), "--mode", "detection",
                                          "covering_consensus", "--no-plots", "--quiet", "--out",
                                          str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        outputs[name] = [(r["k"], r["plan"], r["per_image"]) for r in results["runs"]]
        capsys.readouterr()
    assert outputs["lying"] == outputs["bare"]
    k, plan, _ = outputs["lying"][0]
    assert k == 2 and plan["k"] == 2 and plan["patch_size"] == [3, 3] and plan["lower_bound"] < 100


@pytest.mark.parametrize("argv,message", [
    (["certify", "--patch", "3", "3", "--sizes", "1-1000000000"], "1000000000 patch sizes; at most 4096"),
    (["plan", "--image", "28", "28", "--patch", "3", "--plot", "layout.txt"], "name it FILE.png"),
])
def test_options_are_checked_before_anything_is_built(argv, message, capsys):
    assert main(argv) == 2
    one_error_line(capsys, message)


def run_judged(argv, seconds: float) -> int:
    """Run the CLI under an alarm; exit 0, or exit 2 with one ``certmask: error:`` line (notes such as
    tune's "the data hold fewer images" may come first, one line each). Returns the exit status."""
    err = io.StringIO()
    with deadline(seconds), redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code in (0, 2), (argv, code)
    if code == 2:
        lines = err.getvalue().splitlines()
        assert lines and lines[-1].startswith("certmask: error: ") and err.getvalue().endswith("\n"), (
            argv, err.getvalue())
        assert all(line.startswith("note: ") for line in lines[:-1]), (argv, err.getvalue())
    return code


OPTION_VALUES = {
    "--patch": st.lists(st.sampled_from(["3", "0", "-1", "29", "1000000000", "x", "2"]), min_size=1,
                        max_size=3),
    "--k": st.lists(st.sampled_from(["1", "2", "0", "-1", "1000000"]), min_size=1, max_size=2),
    "--mask": st.lists(st.sampled_from(["7", "2", "0", "28", "29", "99999999999999999999"]), min_size=1,
                       max_size=3),
    # valid values stay small: 28 masks per axis (784 masks) or two patches of a k=2 set ask recovery
    # hundreds of thousands of pair passes per image, minutes of legitimate work, not a hang
    "--masks-per-axis": st.lists(st.sampled_from(["4", "1", "0", "-3", "7", "1000000"]), min_size=1,
                                 max_size=3),
    "--limit": st.sampled_from(["3", "1", "0", "-2", "1e3"]),
    "--image-size": st.lists(st.sampled_from(["28", "16", "0", "100000", "-1"]), min_size=1, max_size=3),
    "--fill": st.sampled_from(["0", "1", "0.5", "5", "-1", "nan", "inf"]),
    "--batch-size": st.sampled_from(["1", "7", "0", "-4", "1000000000000"]),
    "--memory-budget-mb": st.sampled_from(["1", "0", "-1", "nan", "1e-9"]),
    "--margin-tolerance": st.sampled_from(["0", "0.001", "-1", "nan", "inf", "1e308"]),
    "--sizes": st.lists(st.sampled_from(["2", "1-4", "3x2", "0", "5-1", "2x", "1-1000000000", "x", "9-9"]),
                        min_size=1, max_size=3),
    "--patches": st.sampled_from(["1", "0", "-1", "40"]),
    "--device": st.sampled_from(["cpu", "cuda", "nonsense", "cpu:1", ""]),
    "--layout": st.sampled_from(["NCHW", "NHWC", "nchw"]),
    "--classes": st.lists(st.sampled_from(["a", "b", "a", "T-shirt"]), min_size=1, max_size=11),
    "--mode": st.lists(st.sampled_from(["detection", "plurality", "covering_consensus", "recovery", "paper",
                                        "bogus"]), min_size=1, max_size=3),
    "--strategy": st.lists(st.sampled_from(["replicated", "offset", "patchcleanser", "grid"]), min_size=1,
                           max_size=2),
    "--num-classes": st.sampled_from(["10", "9", "0", "-1"]),
    "--mean": st.lists(st.sampled_from(["0.5", "nan", "0"]), min_size=1, max_size=3),
    "--std": st.lists(st.sampled_from(["0.5", "0", "-1", "inf"]), min_size=1, max_size=3),
    "--data": st.sampled_from(["fashion-mnist-subset", "missing.npz", "/dev/null", ".", "cifar"]),
    "--model": st.sampled_from(["bundled", "fashion-cnn", "video-cnn", "nope", "os:system", "missing.pt2"]),
}


@settings(max_examples=30)
@given(st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.just(None), max_size=5).flatmap(
    lambda chosen: st.fixed_dictionaries({name: OPTION_VALUES[name] for name in chosen})),
    st.booleans())
def test_any_certify_options_give_a_result_or_one_named_error(tmp_path_factory, options, with_recovery):
    """Property: hostile values for any certify option end in exit 0 with results, or exit 2 with one
    ``certmask: error:`` line; never a traceback, a hang or an unbounded allocation."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["certify", "--patch", "3", "3", "--limit", "3", "--no-plots", "--quiet", "--out", str(out)]
    if with_recovery:
        argv += ["--mode", "detection", "recovery"]
    for name, value in options.items():
        argv += [name, *value] if isinstance(value, list) else [name, value]
    if run_judged(argv, seconds=60) == 0:
        results = json.loads((out / "results.json").read_text())
        assert 1 <= results["images"] <= 3 and results["runs"]


def test_a_folder_where_a_file_belongs_is_named_as_such(tmp_path, capsys):
    (tmp_path / "masks.json").mkdir()
    (tmp_path / "weights.pt").mkdir()
    assert main(["coverage", str(tmp_path / "masks.json"), "--patch", "3"]) == 2
    one_error_line(capsys, "masks.json' is a directory")
    assert main(RUN + ["--model", "fashion-cnn", "--weights", str(tmp_path / "weights.pt"),
                       "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys, "weights.pt' is a directory")


def test_a_folder_no_run_wrote_is_left_untouched(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(RUN + ["--out", str(foreign), "--overwrite"]) == 2
    one_error_line(capsys, "holds no results.json; not overwriting it")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # not even a lock file


def test_a_path_with_a_nul_byte_is_not_found(tmp_path, capsys):
    """Found by the core's fuzz wall once mask-set files were opened with os.stat (which raises
    ValueError on a NUL byte, where Path.is_file() said False)."""
    assert main(["coverage", str(tmp_path / "masks.json\x00"), "--patch", "1"]) == 2
    one_error_line(capsys, "mask-set file not found")


@pytest.mark.parametrize("argv,message", [
    (["attack", "--patch", "3", "3", "--limit", "2", "--steps", "0", "--quiet"], "--steps and --stride"),
    (["attack", "--patch", "3", "3", "--limit", "2", "--stride", "0", "--quiet"], "--steps and --stride"),
    (["certify", "--patch", "3", "3", "--limit", "2", "--device", "meta", "--quiet"], "holds no data"),
])
def test_review_findings_end_in_one_named_error(argv, message, tmp_path, capsys):
    """Found by an independent review: each ended in a traceback."""
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, message)


def test_a_bad_tolerance_is_refused_before_the_folder_is_touched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(RUN + ["--margin-tolerance", "nan", "--out", str(out)]) == 2
    one_error_line(capsys, "margin_tolerance must be a finite number >= 0")
    assert not out.exists()


HOSTILE_VALUES = st.sampled_from([None, "x", "", -1, -2**70, 2**70, 1e308, float("nan"), [], {}, True, False,
                                  [0, 1], {"a": 1}, "inf", 0.5, 3])


@settings(max_examples=60)
@given(data=st.data())
def test_any_edited_field_is_refused_or_harmless(finished, data):
    """Property: check_records on a record with any field (at any depth) replaced by a hostile value
    raises CertMaskError or accepts it; never another exception."""
    from certmask_core.run.config import RunConfig, masksets_of
    from certmask_core.run.records import check_records
    done, args = finished
    records = read_per_image(done / "per_image.jsonl")
    labels = np.array([records[i]["label"] for i in sorted(records)])
    config = RunConfig((3, 3), (1, 2), ("replicated",), ("detection", "plurality", "recovery", "paper"),
                       sizes=[2, 3, 4])
    index = data.draw(st.sampled_from(sorted(records)))
    record = json.loads(json.dumps(records[index]))
    target, key = record, data.draw(st.sampled_from(sorted(record)))
    while isinstance(target[key], dict) and target[key] and data.draw(st.booleans()):
        target, key = target[key], data.draw(st.sampled_from(sorted(target[key])))
    target[key] = data.draw(HOSTILE_VALUES)
    try:
        check_records({**records, index: record}, labels, None, config, masksets_of(config, (28, 28)), 10)
    except experiment.CertMaskError as err:
        assert "\n" not in str(err)


COMMAND_OPTIONS = {
    "attack": (["attack", "--patch", "5", "5", "--limit", "2", "--steps", "1", "--stride", "9", "--quiet"], {
        "--steps": st.sampled_from(["1", "0", "-3", "x"]),
        "--stride": st.sampled_from(["9", "0", "-1", "100000"]),
        "--patches": st.sampled_from(["1", "2", "3"]),
        "--true-patch": st.lists(st.sampled_from(["6", "0", "-1", "99"]), min_size=2, max_size=2),
        "--mode": st.sampled_from(["detection", "paper", "recovery", "nope"]),
        "--k": st.lists(st.sampled_from(["1", "0", "2"]), min_size=1, max_size=2),
    }),
    "tune": (["tune", "--patch", "5", "5", "--tune-images", "3", "--check-images", "2", "--budget", "20",
              "--k", "1", "--strategy", "patchcleanser", "--no-plots", "--quiet"], {
        "--budget": st.sampled_from(["20", "0", "-5", "1", "10000000000"]),
        "--tune-images": st.sampled_from(["3", "0", "-1"]),
        "--check-images": st.sampled_from(["2", "0", "-1", "5000"]),
        "--limit": st.sampled_from(["4", "1", "0"]),
        "--shape": st.sampled_from(["square", "any", "round"]),
        "--margin-tolerance": st.sampled_from(["0.001", "nan", "-1"]),
    }),
    "train": (["train", "--limit", "32", "--epochs", "1", "--train-batch-size", "16", "--patch", "5", "5",
               "--quiet"], {
        "--epochs": st.sampled_from(["1", "0", "-1"]),
        "--train-batch-size": st.sampled_from(["16", "0", "1000"]),
        "--lr": st.sampled_from(["0.001", "0", "-1", "nan", "1e300"]),
        "--p-none": st.sampled_from(["0.2", "-0.5", "2", "nan"]),
        "--augment": st.sampled_from(["maskset", "cutout", "greedy", "none", "bogus"]),
        "--cutout-size": st.sampled_from(["12", "0", "100"]),
        "--greedy-samples": st.sampled_from(["1", "0", "-2"]),
        "--label-smoothing": st.sampled_from(["0.05", "1.5", "-1"]),
    }),
}


@settings(max_examples=15)
@given(command=st.sampled_from(sorted(COMMAND_OPTIONS)), data=st.data())
def test_any_attack_tune_train_options_give_a_result_or_one_named_error(tmp_path_factory, finished, command,
                                                                         data):
    """Property: as for certify, hostile values for the other commands' own options end in exit 0 or in
    one ``certmask: error:`` line with exit 2; never a traceback or a hang."""
    base, options = COMMAND_OPTIONS[command]
    if command == "train":  # 48 training images (the bundled subset is a test set)
        images, labels, _ = load_bundled_subset()
        path = finished[0].parent / "train.npz"
        if not path.exists():
            np.savez(path, images=images[:48], labels=labels[:48])
        base = base + ["--data", str(path)]
    chosen = data.draw(st.dictionaries(st.sampled_from(sorted(options)), st.just(None), max_size=3))
    argv = base + ["--out", str(tmp_path_factory.mktemp("fuzz") / "out")]
    for name in chosen:
        value = data.draw(options[name])
        argv += [name, *value] if isinstance(value, list) else [name, value]
    run_judged(argv, seconds=120)


def test_tune_without_check_images(tmp_path, capsys):
    """Found by the fuzz wall: --check-images 0 passed labels without images ("check_images and
    check_labels go together", a Python message for a CLI user)."""
    assert main(["tune", "--patch", "5", "5", "--limit", "3", "--tune-images", "3", "--check-images", "0",
                 "--budget", "20", "--k", "1", "--strategy", "patchcleanser", "--no-plots", "--quiet",
                 "--out", str(tmp_path / "tune")]) == 0
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["check_images"] is None


def test_a_class_file_too_large_is_refused_not_cut(tmp_path, capsys):
    """A class list cut at 1 MiB would have named fewer classes than the file does."""
    listed = tmp_path / "classes.txt"
    listed.write_text("".join(f"class{i}\n" for i in range(200_000)))
    assert main(RUN + ["--classes", str(listed), "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys, "is larger than 1048576 bytes")


def test_a_learning_rate_beyond_float32_is_refused(tmp_path, capsys):
    """Found by the fuzz wall: --lr 1e300 overflowed inside torch's optimiser step (a traceback)."""
    images, labels, _ = load_bundled_subset()
    np.savez(tmp_path / "train.npz", images=images[:32], labels=labels[:32])
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--epochs", "1", "--train-batch-size", "16",
                 "--patch", "5", "5", "--quiet", "--lr", "1e300", "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "lr must be at most 1e+06, got 1e+300")
