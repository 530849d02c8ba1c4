"""The run directory is never lost or left half-made: runs are staged and swapped in, --overwrite only replaces
runs, output problems are found before loading, a failed save keeps the trained model, folder swaps are atomic,
permissions follow the umask, and LoRA runs load after being copied, tarred and moved."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab import io
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.run import RUN_MARKER, train

TEXTS = ["the goal team win match score", "bread soup", "code chip data robot the a"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): equal snapshots mean an untouched folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def leftovers(parent: Path) -> list[str]:
    """Hidden staging / old folders a run may have left beside RUN_DIR."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


@pytest.fixture(scope="module")
def old_run(tiny_bert, data_dir, tmp_path_factory, helpers) -> Path:
    """A finished 3-step run, copied by each test that replaces it."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("old") / "run")
    return helpers.train_quietly(cfg)


@pytest.fixture
def run_copy(old_run, tmp_path) -> Path:
    return shutil.copytree(old_run, tmp_path / "runs" / "run")


# ---------------------------------------------------------------------------------------------
# A failed start or a failed --overwrite changes nothing


def test_a_start_that_never_trained_leaves_nothing_behind(make_config, data_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(out),
                                                            "data.train": str(tmp_path / "missing.jsonl")}))
    assert main(["train", str(config), "--no-progress"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # not even runs/ is left

    write_config(config, make_config({"output_dir": str(out)}))
    assert main(["train", str(config), "--no-progress"]) == 0  # no --overwrite needed
    assert (out / RUN_MARKER).is_file() and (out / "model" / "model.safetensors").is_file()
    assert leftovers(out.parent) == []


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_load_its_data(run_copy, make_config, tmp_path):
    before = snapshot(run_copy)
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(run_copy),
                                                            "data.train": str(tmp_path / "missing.jsonl")}))
    assert main(["train", str(config), "--no-progress", "--overwrite"]) == 2
    assert snapshot(run_copy) == before
    assert leftovers(run_copy.parent) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_overwrite_keeps_the_old_run_when_training_is_interrupted(run_copy, make_config, monkeypatch, failure):
    import tunelab.train.loop as loop

    def interrupted(model, **kwargs):
        raise failure("stopped")

    monkeypatch.setattr(loop, "train_loop", interrupted)
    before = snapshot(run_copy)
    with pytest.raises(failure):
        train(make_config({"output_dir": str(run_copy)}), overwrite=True, show_progress=False, log=lambda *a: None)
    assert snapshot(run_copy) == before
    assert leftovers(run_copy.parent) == []


def test_overwrite_refuses_a_folder_that_is_not_a_run(make_config, tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hello')\n")
    write_config(project / "config.yaml", make_config({"output_dir": str(project)}))  # a tunelab config, even
    before = snapshot(project)
    assert main(["train", str(project / "config.yaml"), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is not a tunelab run" in err and "another --output-dir" in err
    assert snapshot(project) == before


def test_overwrite_replaces_a_run_of_an_earlier_version(run_copy, make_config, tmp_path):
    """Earlier runs have no marker: config.yaml of a run config and only run outputs make them a run."""
    (run_copy / RUN_MARKER).unlink()
    (run_copy / "eval-valid.json").write_text("{}")
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(run_copy), "train.max_steps": 1}))
    assert main(["train", str(config), "--no-progress", "--overwrite"]) == 0
    assert json.loads((run_copy / "eval.json").read_text())["steps"] == 1
    assert not (run_copy / "eval-valid.json").exists() and (run_copy / RUN_MARKER).is_file()
    assert leftovers(run_copy.parent) == []


# ---------------------------------------------------------------------------------------------
# Output problems: one line, exit 2, before any data or model is loaded


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_output_dir_that_cannot_be_a_folder_is_refused_before_loading(make_config, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "is a file" else blocker / "runs" / "x"
    # the data file is missing too: the output check must come first
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(out),
                                                            "data.train": str(tmp_path / "missing.jsonl")}))
    assert main(["train", str(config), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "output_dir" in err and "file" in err and "missing.jsonl" not in err
    assert blocker.read_text() == "not a folder"


@contextlib.contextmanager
def without_write_permission():
    """A read-only folder, and a process that cannot write into it: as root, the effective uid is `nobody`
    while the block runs (root writes into a 0555 folder, so chmod alone proves nothing)."""
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        folder = top / "read-only"
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        if os.geteuid() == 0:
            os.seteuid(65534)
        try:
            yield folder
        finally:
            if os.getuid() == 0:
                os.seteuid(0)
    finally:
        shutil.rmtree(top)


def test_read_only_output_folder_is_refused_before_loading(make_config):
    with without_write_permission() as folder:
        cfg = make_config({"output_dir": str(folder / "run")})
        with pytest.raises(TunelabError) as err:
            train(cfg, show_progress=False, log=lambda *a: None)
        assert not list(folder.iterdir())
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "writable" in message


# ---------------------------------------------------------------------------------------------
# A failed save after training keeps the trained model


def test_disk_full_during_the_final_save_rescues_the_trained_model(run_copy, make_config, tmp_path, monkeypatch,
                                                                   capture_trained_model, capsys):
    import tunelab.models.build as build

    real, calls = build.save_model, []

    def disk_full_once(model, tokenizer, model_dir, *args):
        calls.append(model_dir)
        if len(calls) == 1:
            (Path(model_dir).parent / "model").mkdir()  # a partly written save takes space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(model_dir))
        return real(model, tokenizer, model_dir, *args)

    monkeypatch.setattr(build, "save_model", disk_full_once)
    before = snapshot(run_copy)
    # without checkpoints (with them, the run stays for `tunelab resume`: tests/test_resume.py)
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(run_copy),
                                                            "train.checkpoint_every": 0}))
    assert main(["train", str(config), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    rescued = sorted(run_copy.parent.glob("run.rescued-*"))
    assert len(rescued) == 1 and len(calls) == 2
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(rescued[0]) in err
    assert snapshot(run_copy) == before  # the old run is untouched
    assert leftovers(run_copy.parent) == []
    saved = load_file(str(rescued[0] / "model" / "model.safetensors"))
    trained = capture_trained_model["model"].state_dict()
    assert saved and all(torch.equal(saved[k], trained[k]) for k in saved)
    assert main(["predict", str(rescued[0]), "--text", TEXTS[0]]) == 0  # a run tunelab can use


def test_a_failure_after_saving_rescues_the_staged_run(make_config, tmp_path, monkeypatch, capsys):
    import tunelab.run as run

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run, "_write_report", disk_full)
    config = write_config(tmp_path / "c.yaml", make_config({"output_dir": str(tmp_path / "run"),
                                                            "train.checkpoint_every": 0}))
    assert main(["train", str(config), "--no-progress"]) == 2
    rescued = sorted(tmp_path.glob("run.rescued-*"))
    assert len(rescued) == 1 and str(rescued[0]) in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []
    for name in ("config.yaml", "metrics.jsonl", "model/model.safetensors", "eval.json"):
        assert (rescued[0] / name).is_file(), name


# ---------------------------------------------------------------------------------------------
# tunelab.io: atomic folder swaps, permissions


def folder_with(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "w").write_text(text)
    return path


def test_atomic_replace_dir_never_leaves_a_moment_without_the_folder(tmp_path, monkeypatch):
    a, b = folder_with(tmp_path / "a", "a"), folder_with(tmp_path / "b", "b")
    if not io.exchange_paths(a, b):
        pytest.skip(f"the filesystem of {tmp_path} refuses renameat2(RENAME_EXCHANGE)")
    assert (a / "w").read_text() == "b" and (b / "w").read_text() == "a"
    final = folder_with(tmp_path / "model", "old")
    new = folder_with(io.staging_dir(final), "new")
    present = []
    for name in ("replace", "rename"):  # what a two-step swap would call: note whether `final` exists then
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda src, dst, *a, _real=real, **k: (present.append(final.exists()),
                                                                            _real(src, dst, *a, **k))[1])
    io.atomic_replace_dir(new, final)
    assert (final / "w").read_text() == "new" and not new.exists()
    assert all(present)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "model"]


def test_atomic_replace_dir_falls_back_to_two_renames_and_restores_the_old_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "exchange_paths", lambda a, b: False)  # e.g. a filesystem that says EINVAL
    final = folder_with(tmp_path / "model", "old")
    io.atomic_replace_dir(folder_with(io.staging_dir(final), "new"), final)
    assert (final / "w").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    new = folder_with(io.staging_dir(final), "newer")
    real = os.replace

    def refuse_the_new_folder(src, dst):
        if Path(src) == new:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError):
        io.atomic_replace_dir(new, final)
    assert (final / "w").read_text() == "new" and (new / "w").read_text() == "newer"


def test_a_swap_that_succeeded_is_not_failed_by_deleting_the_old_folder(tmp_path, monkeypatch):
    final = folder_with(tmp_path / "model", "old")
    new = folder_with(io.staging_dir(final), "new")
    if not io.exchange_paths(new, final):
        pytest.skip(f"the filesystem of {tmp_path} refuses renameat2(RENAME_EXCHANGE)")
    io.exchange_paths(new, final)  # back as it was: the test swaps through atomic_replace_dir

    def busy(path, ignore_errors=False, **kwargs):  # e.g. a file held open on a network filesystem
        if not ignore_errors:
            raise OSError(errno.EBUSY, "busy", str(path))

    monkeypatch.setattr(shutil, "rmtree", busy)
    io.atomic_replace_dir(new, final)  # the new folder is in place: no error
    assert (final / "w").read_text() == "new"


def test_staged_dir_leaves_nothing_on_failure_and_swaps_in_on_success(tmp_path):
    final = folder_with(tmp_path / "merged", "old")
    for failure in (RuntimeError("save failed"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with io.staged_dir(final) as tmp:
                (tmp / "w").write_text("half")
                raise failure
        assert (final / "w").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    with io.staged_dir(final) as tmp:
        (tmp / "w").write_text("new")
    assert (final / "w").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_exchange_paths_says_false_where_the_swap_is_refused(tmp_path):
    a = folder_with(tmp_path / "a", "a")
    with pytest.raises(FileNotFoundError):
        io.exchange_paths(a, tmp_path / "missing")  # a real error is raised, not taken for "unsupported"


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_and_staging_folders_follow_the_umask(tmp_path, mask):
    with umask(mask):
        io.atomic_write_text(tmp_path / "f.txt", "x")
        folder = io.staging_dir(tmp_path / "model")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
    with umask(mask):
        assert io.current_umask() == mask and os.umask(mask) == mask  # read without changing it


def test_a_finished_run_is_readable_by_others_under_umask_022(make_config, helpers):
    with umask(0o022):
        run_dir = helpers.train_quietly(make_config())
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in [run_dir, *run_dir.rglob("*")]}
    owner_only = {name: oct(mode) for name, mode in modes.items() if mode & 0o044 != 0o044}
    assert owner_only == {}
    assert modes["config.yaml"] == 0o644 and modes["model"] == 0o755 and modes["."] == 0o755


# ---------------------------------------------------------------------------------------------
# LoRA runs are self-contained: copy, tar, move, delete the original and the base, load the copy


@torch.no_grad()
def run_logits(run_dir: Path) -> torch.Tensor:
    from tunelab.runs import load_run

    run = load_run(run_dir)
    model, tokenizer = run.model, run.tokenizer
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def tar_round_trip(folder: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True)
    archive = target.parent / "run.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=target.name)
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent, filter="tar")
    archive.unlink()
    return target


def test_a_lora_run_loads_after_copying_and_deleting_the_original_and_the_base(tiny_bert, data_dir, tmp_path,
                                                                              helpers):
    source = shutil.copytree(tiny_bert, tmp_path / "base-source")
    cfg = helpers.tiny_config(source, data_dir / "train.jsonl", tmp_path / "orig" / "run",
                              {"method.name": "lora", "train.lr": 1e-2})
    run_dir = helpers.train_quietly(cfg)
    weights = run_dir / "base" / "model.safetensors"
    assert not weights.is_symlink() and weights.stat().st_nlink == 2  # a hard link: no extra disk
    recorded = json.loads((run_dir / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(run_dir.resolve() / "base")  # where the run was saved (not its staging folder)
    expected = run_logits(run_dir)

    copies = [shutil.copytree(run_dir, tmp_path / "elsewhere" / "copy"),
              tar_round_trip(run_dir, tmp_path / "untarred" / "run")]
    shutil.rmtree(tmp_path / "orig")
    shutil.rmtree(source)
    for copy in copies:
        assert torch.equal(run_logits(copy), expected), copy


def test_a_lora_run_copies_the_base_weights_where_links_are_refused(tiny_bert, data_dir, tmp_path, helpers,
                                                                   monkeypatch):
    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run", {"method.name": "lora"})
    run_dir = helpers.train_quietly(cfg)
    weights = run_dir / "base" / "model.safetensors"
    assert not weights.is_symlink() and weights.stat().st_nlink == 1
    assert weights.read_bytes() == (tiny_bert / "model.safetensors").read_bytes()

    moved = shutil.move(run_dir, tmp_path / "moved")
    assert run_logits(Path(moved)).shape == (3, 3)
    weights = Path(moved) / "base" / "model.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "gone" / "model.safetensors")  # how runs of tunelab 0.1.0 held the base
    with pytest.raises(TunelabError, match="links to base weights that are gone"):
        run_logits(Path(moved))
    shutil.rmtree(Path(moved) / "base")
    with pytest.raises(TunelabError, match="base model .* is missing; copy or move the whole run folder"):
        run_logits(Path(moved))


def test_validate_flags_a_relative_output_dir_that_is_a_folder_of_other_files(tmp_path, monkeypatch):
    # a relative output_dir was compared with the absolute nearest existing path, so its contents went unchecked
    from tunelab.check import check_output

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    problems = check_output("project")
    assert len(problems) == 1 and problems[0].startswith("output_dir project is not empty and is not a tunelab run")
    assert check_output("new-run") == []
