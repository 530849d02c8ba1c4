"""The study behind `tunelab tune`: where it is stored, the search folder it belongs to, and the bookkeeping that
lets a search stop at any moment and go on with the same command.

- The folder: RUN_DIR holds `tunelab-tune.json` (which study, stored where), `trials/NNN` (one run per trial,
  NNN = the trial's number), the default storage and the outputs (best.yaml, trials.jsonl, report.html). A new
  search needs an absent or empty RUN_DIR; `--overwrite` starts over only in a search folder, never in a training
  run or another folder. Every tune process holds a shared lock on RUN_DIR; starting over takes it exclusively.
- The storage: RUN_DIR/study.db (SQLite) by default, RUN_DIR/study.journal (Optuna's journal file: appends under
  a file lock, which concurrent processes take better than SQLite's database lock) by default with --workers > 1,
  or --storage: any database URL Optuna takes, or journal:PATH.
- The study records its search space, its base config and its metric (user attrs); a later command on the same
  study must bring the same three, so a continued search never mixes trials of two searches.
- Trials: each process asks for a trial under a lock file in RUN_DIR (so local workers never overshoot
  --trials together) and marks it with its host, process id and process start time. A trial left RUNNING by a
  process that is gone (SIGKILL, a crash, a Ctrl-C) is failed and queued again with the same parameters
  (Optuna's retry convention: the copy's system attrs name the original in `failed_trial` / `retry_history`);
  such replaced trials do not count toward --trials, so `--trials N` always ends with N trials that finished,
  were pruned or failed on their own. Processes on other machines cannot be checked from here: with a database
  server, trials send Optuna heartbeats and a trial whose heartbeat stopped is failed and queued again the same way.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tunelab.errors import TunelabError

MARKER = "tunelab-tune.json"
TUNE_ENTRIES = {MARKER, "trials", "study.db", "best.yaml", "trials.jsonl", "report.html", ".ask.lock"}
OWNER = "tunelab.process"  # user attr: the process running a trial
ERROR = "tunelab.error"  # user attr: why a trial failed
MAX_RETRIES = 2  # a trial interrupted more often than this counts as failed: something kills it every time
HEARTBEAT_S = 30  # database servers: a trial's heartbeat interval; stale after 4 missed beats


def quiet_optuna() -> None:
    """Optuna's own log lines and its experimental-feature warnings stay out of the search's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # trials are asked for one at a time (tunelab needs the count checked under a lock), and a trial's
    # heartbeat is sent by `heartbeat` below, as Study.optimize would
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


# ---------------------------------------------------------------------------------------------
# Where the study is stored


@dataclass
class Storage:
    spec: str
    """What tunelab-tune.json records: study.db / study.journal (in RUN_DIR) or the --storage text (without a
    password)."""
    url: str | None = None
    journal: Path | None = None
    local: bool = True
    """Only processes of this machine use it, so a RUNNING trial's process can be checked."""

    @property
    def heartbeat(self) -> bool:
        return not self.local

    def open(self):
        """The Optuna storage object; one clear error when it cannot be opened."""
        import optuna

        if self.journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            try:
                self.journal.parent.mkdir(parents=True, exist_ok=True)
                return JournalStorage(JournalFileBackend(str(self.journal)))
            except OSError as e:
                raise TunelabError(f"--storage {self.spec}: cannot open the journal file ({e.strerror or e})") \
                    from None
        kwargs: dict = {}
        if self.url.startswith("sqlite"):  # workers wait for SQLite's lock instead of failing at once
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        if self.heartbeat:
            kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S,
                          heartbeat_stale_trial_callback=retry_callback())
        try:
            return optuna.storages.RDBStorage(self.url, **kwargs)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's many errors (bad URL, no driver, no server)
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise TunelabError(f"--storage {self.spec}: cannot open it ({first}); check the URL, that the "
                               "database server is reachable, and that its Python driver is installed") from None


def parse_storage(text: str) -> Storage:
    """--storage: journal:PATH or a database URL."""
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        if not path:
            raise TunelabError("--storage journal: needs a file after the colon, e.g. journal:runs/search.journal")
        return Storage(f"journal:{path}", journal=Path(path))
    if "://" in text:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            shown = make_url(text).render_as_string(hide_password=True)
        except ArgumentError:
            raise TunelabError(f"--storage {text!r}: not a database URL Optuna can open (e.g. sqlite:///study.db, "
                               "postgresql://user@host/db)") from None
        return Storage(shown, url=text, local=text.startswith("sqlite"))
    raise TunelabError(f"--storage {text!r}: expected a database URL (sqlite:///PATH, postgresql://...) or "
                       "journal:PATH (Optuna's journal file)")


def resolve_storage(given: str | None, run_dir: Path, workers: int, recorded: str | None) -> Storage:
    """The storage of this command: --storage, else the one RUN_DIR's search was started with, else the
    default (SQLite; a journal file for several workers)."""
    defaults = {"study.db": Storage("study.db", url=f"sqlite:///{run_dir / 'study.db'}"),
                "study.journal": Storage("study.journal", journal=run_dir / "study.journal")}
    if given is None:
        chosen = recorded or ("study.journal" if workers > 1 else "study.db")
        if chosen not in defaults:
            raise TunelabError(f"{run_dir}: this search's study is stored in {chosen}; pass --storage with that "
                               "URL to go on with it")
        return defaults[chosen]
    storage = parse_storage(given)
    if recorded is not None and recorded != storage.spec:
        where = f"{run_dir / recorded}" if recorded in defaults else recorded
        raise TunelabError(f"--storage {storage.spec}: {run_dir} holds a search stored in {where}; leave out "
                           f"--storage (or pass that one) to go on with it, or start over with --overwrite")
    return storage


# ---------------------------------------------------------------------------------------------
# The search folder


def read_marker(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_folder(run_dir: Path) -> dict | None:
    """Refuse a RUN_DIR that cannot hold a search; the marker of the search it holds, or None for a new one."""
    from tunelab.io import not_a_folder
    from tunelab.run import is_tunelab_run

    why = not_a_folder(run_dir)
    if why:
        raise TunelabError(f"--output-dir {run_dir} {why}; choose another --output-dir")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    marker = read_marker(run_dir)
    if marker is not None:
        return marker
    what = "a training run" if is_tunelab_run(run_dir) else "not a tunelab search"
    raise TunelabError(f"--output-dir {run_dir} is not empty and is {what} (a search folder holds {MARKER}); "
                       "choose another --output-dir")


def lock_folder(run_dir: Path, exclusive: bool) -> int:
    """A lock on RUN_DIR held while this process works in it (shared), or while it starts over (exclusive)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        doing = "works in it" if exclusive else "is starting it over (--overwrite)"
        raise TunelabError(f"{run_dir}: another tunelab tune process {doing} right now; wait for it or stop it") \
            from None
    return fd


def share_lock(fd: int) -> None:
    """From exclusive (starting over) to shared (working), without a moment unlocked."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def clear_folder(run_dir: Path) -> None:
    """Remove a search's own entries (its trials, default storage and outputs) before starting over."""
    for child in run_dir.iterdir():
        if child.name in TUNE_ENTRIES or child.name.startswith("study.journal"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def write_marker(run_dir: Path, study_name: str, storage: Storage) -> None:
    from tunelab import __version__
    from tunelab.io import atomic_write_json

    atomic_write_json(run_dir / MARKER, {"tunelab_version": __version__, "study": study_name,
                                         "storage": storage.spec,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def search_name(run_dir: Path) -> str:
    """RUN_DIR's own name, for `--output-dir .` or `..` too (whose Path.name is '' or '..'): what a new study is
    named, what the report's title and best.yaml's NAME-best say."""
    return Path(os.path.abspath(run_dir)).name


def trial_folder(run_dir: Path, number: int) -> Path:
    return run_dir / "trials" / f"{number:03d}"


# ---------------------------------------------------------------------------------------------
# The study


def open_study(storage, name: str, minimise: bool, recorded: dict, run_dir: Path):
    """Create the study, or load it and check that it was started with the same `recorded` attrs (space, base
    config, metric); one error listing what differs."""
    import optuna

    direction = "minimize" if minimise else "maximize"
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction)
    if study.direction.name.lower() != direction:  # a study someone made in a shared database beforehand
        raise TunelabError(f"study {name} in {run_dir} is set to {study.direction.name.lower()} its value, but "
                           f"validation {recorded['metric']} is to {direction}; choose another --output-dir")
    old = study.user_attrs
    if not old:
        for key, value in recorded.items():
            study.set_user_attr(key, value)
        return study
    for key, what in (("space", "search space (--space)"), ("base_config", "config (CONFIG and overrides)")):
        changed = differences(old.get(key, {}), recorded[key])
        if changed:
            raise TunelabError(f"{run_dir}: this search was started with another {what}: {'; '.join(changed[:4])}"
                               f"{'; ...' if len(changed) > 4 else ''}; run the command it was started with to go on "
                               "with it, start over with --overwrite, or choose another --output-dir")
    return study


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' (or 'key added' / 'key left out') for every value that differs between two nested
    mappings."""
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b, full = old.get(key), new.get(key), f"{prefix}{key}"
        if key not in new:
            out.append(f"{full} left out")
        elif key not in old:
            out.append(f"{full} added")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{full}.")
        elif a != b:
            out.append(f"{full}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def retry_callback():
    """Optuna's own retry: a WAITING copy of a failed trial, same parameters, naming the original."""
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


@dataclass
class Tally:
    """The study's trials as --trials counts them: replaced (interrupted and queued again) ones left out."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    replaced: set[int] = field(default_factory=set)

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def words(self) -> str:
        return f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed"


def tally(trials: list) -> Tally:
    from optuna.trial import TrialState

    out = Tally(replaced={n for t in trials for n in t.system_attrs.get("retry_history", [])})
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in trials:
        if t.number not in out.replaced and t.state in names:
            setattr(out, names[t.state], getattr(out, names[t.state]) + 1)
    return out


# ---------------------------------------------------------------------------------------------
# Asking for a trial


@contextlib.contextmanager
def ask_lock(run_dir: Path) -> Iterator[None]:
    """Local processes take turns at counting and asking, so that together they start no more than --trials."""
    with open(run_dir / ".ask.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def next_trial(study, distributions: dict, wanted: int, seed: int, storage: Storage, run_dir: Path, log):
    """Ask for the next trial (a queued retry first), or None when the study holds `wanted` trials, counting the
    ones still running."""
    import optuna

    with ask_lock(run_dir):
        recover_interrupted(study, storage, run_dir, log)
        if storage.heartbeat:
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        counts = tally(trials)
        if counts.done + counts.running >= wanted:
            return None
        study.sampler = sampler(seed, len(trials), wanted)
        trial = study.ask(distributions)
        trial.set_user_attr(OWNER, this_process())
        return trial


def sampler(seed: int, asked: int, wanted: int):
    """TPE, seeded by train.seed and how many trials the study has, so a continued search does not draw its
    first random trials again; the first max(3, wanted/4) trials (at most 10) are random, as TPE needs a few."""
    import optuna

    startup = min(10, max(3, wanted // 4))
    # constant_liar: a trial still running counts as a bad one, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=trial_seed(seed, asked), n_startup_trials=startup, constant_liar=True)


def trial_seed(seed: int, asked: int) -> int:
    """The sampler's seed once `asked` trials exist: (seed, asked) mixed by NumPy's SeedSequence. A plain
    seed + asked would make train.seed 43 repeat train.seed 42's draws one trial later."""
    import numpy as np

    # SeedSequence takes non-negative entropy; torch takes negative seeds, so fold them into 64 bits
    return int(np.random.SeedSequence([seed % 2**64, asked]).generate_state(1)[0])


def pruner(kind: str, startup_trials: int, warmup_evals: int):
    """MedianPruner over evaluations (step k = a trial's k-th evaluation): a trial stops when its best value so
    far is worse than the median of the finished trials' values at its k-th evaluation."""
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_evals + 1)


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _started(os.getpid())}


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot; Linux), None when it is gone or a zombie. Together
    with the pid it names one process: a pid reused by a later process has another start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # field 22 of the file: starttime


def alive(owner: dict) -> bool:
    """Whether the process that runs a trial still runs; a process on another machine is taken to run."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if Path("/proc/self/stat").exists():
        return _started(pid) is not None and _started(pid) == owner.get("start")
    try:  # no /proc (macOS): is there a process with that id at all
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study, storage: Storage, run_dir: Path, log) -> None:
    """Fail and queue again every RUNNING trial whose process is gone (on a local storage also one not yet
    marked: its process died between asking and marking, both done under the ask lock)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if (owner is None and not storage.local) or (owner is not None and alive(owner)):
            continue
        replace_interrupted(study, t.number, run_dir, log, "its process is gone")


def replace_interrupted(study, number: int, run_dir: Path, log, why: str) -> None:
    """Fail a trial that did not finish, queue it again with the same parameters (unless it was interrupted
    MAX_RETRIES times already) and remove its partial run, which the retry does not go on from."""
    import optuna
    from optuna.trial import TrialState

    try:
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return  # another process finished or failed it meanwhile
    retry_callback()(study, study.get_trials()[number])  # a copy: the callback extends its retry_history list
    queued = any(number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False))
    log(f"trial {number} did not finish ({why}): " + ("queued again with the same parameters" if queued else
        f"interrupted {MAX_RETRIES + 1} times, counted as failed"))
    _remove_run(trial_folder(run_dir, number))


def _remove_run(folder: Path) -> None:
    """Remove an interrupted trial's run, unless a process still trains in it (its lock)."""
    from tunelab.run import hold

    if not folder.is_dir():
        return
    try:
        fd = hold(folder)
    except TunelabError:
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def heartbeat(study, trial, storage: Storage) -> Iterator[None]:
    """Optuna heartbeats for a trial of a database server (what Study.optimize sends), so that another
    machine can tell when this process is gone."""
    if not storage.heartbeat:
        yield
        return
    from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses; no public name

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield
