"""The search space and what `tunelab tune` refuses before any trial runs: each mistake is one line naming the
space file and the key (or the option), exit code 2, and nothing written. Sampled values stay in their ranges,
on their steps and among their choices. No training here."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import ConfigError

from .tune_helpers import tune_args, write_search_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(helpers, tiny_bert, data_dir, tmp_path_factory) -> Path:
    return write_search_config(helpers, tiny_bert, data_dir, tmp_path_factory.mktemp("space"))


@pytest.fixture(scope="module")
def base(config) -> dict:
    from tunelab.config import load_config

    data = json.loads(json.dumps(load_config(config).to_dict()))
    data.pop("output_dir")
    return data


def refusal(capsys, config: Path, run_dir: Path, *more: str, space: str | None = None) -> str:
    """Run tune with `space` (text) and return its one stderr line; the exit code must be 2."""
    if space is not None:
        (config.parent / "space.yaml").write_text(space, encoding="utf-8")
    code = main(tune_args(config, run_dir, 2, *more))
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("space, message", [
    ("train.lrr: {type: float, low: 1.0e-3, high: 1.0e-2}",
     "train.lrr: not a config key (did you mean train.lr?)"),
    ("train.batch_size: {type: float, low: 1, high: 8}",
     "train.batch_size: a float range does not fit this key (an integer); use type: int"),
    ("train.optimizer: {type: float, low: 1, high: 8}",
     "train.optimizer: a float range does not fit this key (not a number); use type: categorical with its choices"),
    ("train.lr: {type: float, low: 0.0, high: 1.0e-2}",
     "train.lr: low 0.0 is refused by the config (train.lr: got 0.0; must be > 0)"),
    ("train.lr: {type: float, low: 1.0e-2, high: 1.0e-3}",
     "train.lr: low (0.01) must be below high (0.001); a value that does not vary belongs in the config"),
    ("train.warmup_ratio: {type: float, low: 0.0, high: 0.2, log: true}",
     "train.warmup_ratio: log: true needs low > 0 (got 0.0)"),
    ("train.batch_size: {type: int, low: 8, high: 30, step: 8}",
     "train.batch_size: step 8 must be > 0 and divide high - low (30 - 8)"),
    ("train.batch_size: {type: int, low: 0, high: 32, step: 8}",
     "train.batch_size: low 0 is refused by the config (train.batch_size: got 0; must be >= 1)"),
    ("train.optimizer: {type: categorical, choices: [adamw, lion]}",
     "train.optimizer: choice \"lion\" is refused by the config (train.optimizer: got 'lion'; allowed: 'adamw' | "
     "'adam' | 'sgd')"),
    ("train.optimizer: {type: categorical, choices: []}", "train.optimizer: choices must be a non-empty list, got []"),
    # a list key's config problems name the item (data.augment.edits[1]), not the key followed by a colon
    ("data.augment.edits: {type: categorical, choices: [[swap], [swap, nope]]}",
     "data.augment.edits: choice [\"swap\", \"nope\"] is refused by the config (data.augment.edits[1]: got 'nope'; "
     "allowed: 'synonym' | 'insert' | 'swap' | 'delete')"),
    ("train.lr: {type: float, low: 1.0e-3, hi: 1}",
     "train.lr: unknown field(s) hi for type float; allowed: low, high, log, step"),
    ("train.lr: [1, 2]", "train.lr: expected {type: float | int | categorical, ...}, got [1, 2]"),
    ("output_dir: {type: categorical, choices: [a, b]}",
     "output_dir: cannot be searched (each trial is written in RUN_DIR/trials/NNN)"),
    ("train.early_stopping.metric: {type: categorical, choices: [loss, f1_macro]}",
     "train.early_stopping.metric: cannot be searched (it is the objective the trials are compared on)"),
    ("train.early_stopping: {type: int, low: 1, high: 3}",
     "train.early_stopping: a section, not a value; name one of its keys (train.early_stopping.metric, "
     "train.early_stopping.patience)"),
    ("- train.lr", "the space must be a mapping of config keys to entries, e.g. 'train.lr: {type: float, low: "
                   "1.0e-5, high: 1.0e-3, log: true}'"),
])
def test_a_bad_space_is_one_line_naming_the_file_and_key(config, tmp_path, capsys, space, message):
    line = refusal(capsys, config, tmp_path / "search", space=space)
    assert line == f"error: {config.parent / 'space.yaml'}: {message}"
    assert not (tmp_path / "search").exists()  # refused before anything was written


def test_every_problem_of_a_space_is_in_its_one_line(config, tmp_path, capsys):
    line = refusal(capsys, config, tmp_path / "search", space="train.lrr: {type: float, low: 1, high: 2}\n"
                                                               "train.lr: {type: float, low: 0.0, high: 1.0}\n")
    assert line.startswith(f"error: {config.parent / 'space.yaml'}: 2 problems: train.lrr: not a config key")
    assert "; train.lr: low 0.0 is refused by the config" in line


def test_a_config_without_validation_data_is_refused(config, tmp_path, capsys):
    line = refusal(capsys, config, tmp_path / "search", "data.val_fraction=0", space="train.lr: {type: float, "
                                                                                   "low: 1.0e-3, high: 1.0e-2}")
    assert line == ("error: tune needs a validation split (trials are compared on validation f1_macro): set "
                    "data.validation to a file, or data.val_fraction > 0")


def test_a_config_the_task_refuses_is_refused_before_any_trial(config, tmp_path, capsys):
    line = refusal(capsys, config, tmp_path / "search", "data.augment.back_translation=[nowhere]",
                   space="train.lr: {type: float, low: 1.0e-3, high: 1.0e-2}")
    assert line.startswith("error: ") and "data.augment.back_translation" in line and "nowhere" in line, line
    assert not (tmp_path / "search" / "trials").exists()


@pytest.mark.parametrize("more, message", [
    (("--workers", "0"), "--workers: got 0; must be >= 1"),
    (("--timeout", "0"), "--timeout: got 0; must be a finite number of seconds > 0 (leave it out for no limit)"),
    (("--timeout", "nan"), "--timeout: got nan; must be a finite number of seconds > 0 (leave it out for no "
                           "limit)"),
    (("--timeout", "inf"), "--timeout: got inf; must be a finite number of seconds > 0 (leave it out for no "
                           "limit)"),
    (("--storage", "nowhere"), "--storage 'nowhere': expected a database URL (sqlite:///PATH, postgresql://...) or "
                               "journal:PATH (Optuna's journal file)"),
    (("train.early_stopping.metric=bleu",), "train.early_stopping.metric: 'bleu' is not a classification "
                                            "validation metric; known: accuracy, f1_macro, * (it is the metric the "
                                            "trials are compared on)"),
])
def test_bad_options_are_one_line(config, tmp_path, capsys, more, message):
    line = refusal(capsys, config, tmp_path / "search", *more, space="train.lr: {type: float, low: 1.0e-3, "
                                                                      "high: 1.0e-2}")
    head, _, tail = f"error: {message}".partition("*")  # the task's metric list is the task's to grow
    assert line.startswith(head) and line.endswith(tail)


def test_a_folder_that_is_no_search_is_refused(config, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    line = refusal(capsys, config, tmp_path / "busy", "--overwrite", space="train.lr: {type: float, low: 1.0e-3, "
                                                                            "high: 1.0e-2}")
    assert line == (f"error: --output-dir {tmp_path / 'busy'} is not empty and is not a tunelab search (a search "
                    "folder holds tunelab-tune.json); choose another --output-dir")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_the_shipped_space_fits_the_shipped_config():
    from tunelab.config import load_config
    from tunelab.tune.space import load_space

    base = load_config(ROOT / "examples" / "bbc-news.yaml").to_dict()
    space = load_space(ROOT / "examples" / "spaces" / "bbc-news.yaml", base)
    assert [p.key for p in space.params] == ["train.lr", "method.name", "train.batch_size", "train.warmup_ratio"]


SAMPLED = """\
train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
train.warmup_ratio: {type: float, low: 0.0, high: 0.3, step: 0.05}
train.batch_size: {type: int, low: 4, high: 32, step: 4}
train.grad_accum: {type: int, low: 1, high: 8, log: true}
train.epochs: {type: int, low: 1, high: 3}
method.target_modules: {type: categorical, choices: [[query, value], all, auto]}
"""


def test_sampled_values_stay_in_their_ranges_steps_and_choices(base, tmp_path):
    import optuna

    from tunelab.tune.space import load_space
    from tunelab.tune.study import quiet_optuna, sampler

    quiet_optuna()
    (tmp_path / "space.yaml").write_text(SAMPLED, encoding="utf-8")
    space = load_space(tmp_path / "space.yaml", base)
    study = optuna.create_study(direction="maximize")
    seen = []
    for i in range(40):  # past TPE's random start (10 trials at most)
        study.sampler = sampler(seed=0, asked=i, wanted=40)
        trial = study.ask(space.distributions())
        values = space.values(trial.params)
        seen.append(values)
        study.tell(trial, values["train.lr"] * 100 + values["train.batch_size"])
    for v in seen:
        assert 1e-5 <= v["train.lr"] <= 1e-2
        assert 0.0 <= v["train.warmup_ratio"] <= 0.3 and math.isclose(v["train.warmup_ratio"] / 0.05,
                                                                      round(v["train.warmup_ratio"] / 0.05))
        assert isinstance(v["train.batch_size"], int) and v["train.batch_size"] in range(4, 33, 4)
        assert isinstance(v["train.grad_accum"], int) and 1 <= v["train.grad_accum"] <= 8
        assert v["train.epochs"] in (1, 2, 3)
        assert v["method.target_modules"] in (["query", "value"], "all", "auto")
    assert {json.dumps(v["method.target_modules"]) for v in seen} == {'["query", "value"]', '"all"', '"auto"'}
    assert len({v["train.lr"] for v in seen}) == 40  # a continuous range: no value drawn twice
    # a list choice arrives as a list, which the config takes
    from tunelab.tune.trial import trial_config

    lora = dict(next(v for v in seen if isinstance(v["method.target_modules"], list)), **{"method.name": "lora"})
    assert trial_config(base, lora, tmp_path / "t").method.target_modules == ["query", "value"]


def test_searches_with_neighbouring_seeds_draw_unrelated_trials():
    import optuna

    from tunelab.tune.study import quiet_optuna, sampler

    quiet_optuna()
    lr = {"train.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}

    def first_draws(seed: int, asked: int, n: int = 3) -> list[float]:
        """The random draws of a study whose first `asked` trials exist, as next_trial asks them."""
        study = optuna.create_study(direction="maximize")
        for _ in range(asked):
            study.add_trial(optuna.trial.create_trial(params={"train.lr": 1e-3}, distributions=lr, value=0.0))
        out = []
        for i in range(asked, asked + n):
            study.sampler = sampler(seed, i, wanted=40)
            out.append(study.ask(lr).params["train.lr"])
            study.tell(study.trials[-1].number, 0.0)
        return out

    assert first_draws(42, 0) == first_draws(42, 0)  # reproducible by seed
    # seed 43 from its first trial is not seed 42 from its second (it was: both seeded TPE with 43)
    assert set(first_draws(43, 0)).isdisjoint(first_draws(42, 1))
    assert first_draws(-1, 0) != first_draws(1, 0)  # a negative train.seed is a seed of its own


def test_a_sampled_combination_the_config_refuses_is_that_trials_error(base, tmp_path):
    from tunelab.tune.trial import run_trial, trial_config

    with pytest.raises(ConfigError, match="method.r applies to lora; method.name is full"):
        trial_config(base, {"method.r": 4}, tmp_path / "000")
    outcome = run_trial(base, {"method.r": 4}, tmp_path / "000", "f1_macro")
    assert (outcome.state, outcome.message) == (
        "failed", "the config refuses these values: method.r applies to lora; method.name is full")
    assert not (tmp_path / "000").exists()


def test_best_yaml_counts_the_trials_that_ended_and_a_dot_run_dir_has_its_name(base, tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState, create_trial

    from tunelab.config import load_config
    from tunelab.evaluate.report import PAGE_STYLE
    from tunelab.tune.report import SearchInfo, write_outputs
    from tunelab.tune.space import load_space

    (tmp_path / "space.yaml").write_text("train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    space = load_space(tmp_path / "space.yaml", base)
    study = optuna.create_study(direction="maximize")
    # trial 1 was interrupted and retried as trial 2: five trials, four of which ended on their own
    for lr, state, value, system in ((0.001, TrialState.COMPLETE, 0.5, {}), (0.002, TrialState.FAIL, None, {}),
                                     (0.002, TrialState.COMPLETE, 0.7, {"failed_trial": 1, "retry_history": [1]}),
                                     (0.004, TrialState.PRUNED, None, {}), (0.008, TrialState.COMPLETE, 0.6, {})):
        study.add_trial(create_trial(state=state, value=value, params={"train.lr": lr},
                                     distributions=space.distributions(), system_attrs=system))
    run_dir = tmp_path / "my-search"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    write_outputs(study, SearchInfo(Path("."), space, base, "f1_macro", False, 4))
    best = (run_dir / "best.yaml").read_text()
    assert best.startswith("# The best of 4 trials of the search in .: trial 2, validation f1_macro 0.7000.\n")
    assert load_config(run_dir / "best.yaml").output_dir == str(tmp_path / "my-search-best")  # not "-best"
    page = (run_dir / "report.html").read_text()
    assert "<title>tunelab search: my-search</title>" in page
    assert f"<style>{PAGE_STYLE}body{{max-width:1200px}}" in page  # the style of every tunelab page, then its own


# method.r without method.name lora: every trial fails at its config, before any model loads, so these searches
# run through the whole command in a moment
FAILING_SPACE = "method.r: {type: int, low: 2, high: 4}\n"


def test_a_search_in_the_current_folder_names_its_study_after_it(config, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "dot-search"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    (config.parent / "space.yaml").write_text(FAILING_SPACE, encoding="utf-8")
    assert main(tune_args(config, Path("."), 1)) == 1
    assert "trial 0 failed after 0s: the config refuses these values: method.r applies to lora" in \
        capsys.readouterr().out
    assert json.loads((run_dir / "tunelab-tune.json").read_text())["study"] == "dot-search"


def test_a_storage_that_cannot_be_opened_leaves_the_folder_free(config, tmp_path, capsys):
    run_dir, blocker = tmp_path / "search", tmp_path / "a_file"
    blocker.write_text("mine")
    bad = f"sqlite:///{tmp_path / 'missing' / 'study.db'}"
    line = refusal(capsys, config, run_dir, "--storage", bad, space=FAILING_SPACE)
    assert line.startswith(f"error: --storage {bad}: cannot open it (")
    assert list(run_dir.iterdir()) == []  # not tied to that storage: no tunelab-tune.json
    # so the next command is judged on its own storage, not refused for the one that failed
    line = refusal(capsys, config, run_dir, "--storage", f"journal:{blocker / 'j'}")
    assert line.startswith(f"error: --storage journal:{blocker / 'j'}: cannot open the journal file (")
    assert list(run_dir.iterdir()) == []


def _marked_search(run_dir: Path, storage: str) -> None:
    """A search folder whose study `search` is stored in `storage` (what tunelab-tune.json records)."""
    run_dir.mkdir()
    (run_dir / "tunelab-tune.json").write_text(json.dumps({"study": "search", "storage": storage}))


def test_overwrite_never_deletes_a_study_the_folder_did_not_use(config, tmp_path, capsys):
    import optuna

    from tunelab.tune.study import quiet_optuna

    quiet_optuna()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="search", storage=other).set_user_attr("owner", "someone else")
    run_dir = tmp_path / "search"
    _marked_search(run_dir, "study.db")
    line = refusal(capsys, config, run_dir, "--overwrite", "--storage", other, space=FAILING_SPACE)
    assert line == (f"error: --overwrite --storage {other}: that storage holds a study named 'search', which this "
                    f"folder's search did not use (it was stored in {run_dir / 'study.db'}); it may be another "
                    "search's, so it stays: choose another --output-dir, or delete that study yourself "
                    "(optuna delete-study)")
    assert optuna.load_study(study_name="search", storage=other).user_attrs == {"owner": "someone else"}
    assert [p.name for p in run_dir.iterdir()] == ["tunelab-tune.json"]


def test_overwrite_deletes_the_folders_own_study_in_its_storage(config, tmp_path, capsys):
    import optuna

    from tunelab.tune.study import quiet_optuna

    quiet_optuna()
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    old = optuna.create_study(study_name="search", storage=shared)
    old.set_user_attr("space", {"train.lr": {"type": "float"}})
    run_dir = tmp_path / "search"
    _marked_search(run_dir, shared)
    (config.parent / "space.yaml").write_text(FAILING_SPACE, encoding="utf-8")
    assert main(tune_args(config, run_dir, 1, "--overwrite", "--storage", shared)) == 1  # its one trial failed
    capsys.readouterr()
    new = optuna.load_study(study_name="search", storage=shared)
    assert list(new.user_attrs["space"]) == ["method.r"]  # the old study (another space) was deleted, not joined
    assert [t.state.name for t in new.trials] == ["FAIL"]


def test_help_names_both_default_storages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert exit_.value.code == 0
    assert "The study lives in RUN_DIR/study.db (SQLite), or RUN_DIR/study.journal (Optuna's journal file) with " \
           "--workers > 1, unless --storage names another" in text
