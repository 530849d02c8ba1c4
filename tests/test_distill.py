"""method.name: distill on tiny models: the loss by hand, masking, students cut from the teacher, the causal-LM
vocabulary check, the teacher cache, and one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "causal"))  # the tiny Llama of the causal-LM tests

from causal_helpers import alpaca_records  # noqa: E402
from causal_tiny import make_model, make_tokenizer, write_tiny_model  # noqa: E402
from tunelab.errors import ConfigError, TunelabError  # noqa: E402
from tunelab.methods import distill  # noqa: E402

TEACHER_STEPS = 60


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Teacher caches go to a fresh $TUNELAB_HOME per test."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def teacher(tiny_bert, data_dir, tmp_path_factory, helpers) -> Path:
    """A 2-layer tiny BERT classifier trained in full (no dropout: student == teacher must give loss 0)."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("teacher") / "run",
                              {"train.max_steps": TEACHER_STEPS, "train.lr": 5e-3, "model.dropout": 0.0,
                               "train.precision": "fp32"})
    return helpers.train_quietly(cfg)


def student_config(helpers, tiny_bert, data_dir, out: Path, teacher: Path, **method):
    overrides = {"method.name": "distill", "method.teacher": str(teacher), "model.dropout": 0.0,
                 "train.precision": "fp32", **{f"method.{k}": v for k, v in method.items()}}
    return helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", out, overrides)


def prepared(cfg):
    """The distill job of `cfg`, prepared, as `tunelab train` builds it."""
    from tunelab.run import make_job, seed_everything

    seed_everything(cfg.train.seed)
    job = make_job(cfg, torch.device("cpu"), lambda *_: None)
    job.prepare()
    return job


def first_batch(job):
    return next(iter(job.epoch_batches(0)))


# ---------------------------------------------------------------------------------------------
# The loss


class FixedLogits(torch.nn.Module):
    """A 'classifier' whose logits per row are given: forward returns them for the batch's rows."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def test_the_loss_is_alpha_t2_kl_plus_the_hard_loss_by_hand():
    from tunelab.tasks.classification import loss_sum

    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    teacher = torch.tensor([[1.0, 1.5, -0.5], [-1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    batch = {"input_ids": torch.tensor([[0, 5], [1, 5]]), "attention_mask": torch.ones(2, 2, dtype=torch.long),
             "labels": labels}
    job = distill.DistillJob(SimpleNamespace(loss=lambda m, b: loss_sum(m, b)), print, teacher="unused",
                             temperature=2.0, alpha=0.3, cache_teacher=False)
    job.__dict__["teacher"] = FixedLogits(teacher)
    loss, n = job.loss(FixedLogits(student), batch)
    loss = loss.detach()

    T, alpha = 2.0, 0.3
    p_t, p_s = torch.softmax(teacher / T, -1), torch.softmax(student / T, -1)
    kl = sum(float(p_t[i, c] * torch.log(p_t[i, c] / p_s[i, c])) for i in range(2) for c in range(3))
    ce = -float(torch.log_softmax(student, -1)[0, 0] + torch.log_softmax(student, -1)[1, 2])
    assert n == 2
    assert float(loss) == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-6)
    assert float(loss) == pytest.approx(1.32454, rel=1e-5)  # pinned: 0.3 * 4 * KL 0.19128 + 0.7 * CE 1.56429


def test_top_k_soft_loss_renormalises_over_the_kept_ids():
    student, teacher = torch.tensor([[1.0, 2.0, 3.0, 0.0]]), torch.tensor([[0.0, 1.0, 4.0, -3.0]])
    top = teacher.topk(2, dim=-1)
    got = distill.soft_loss(student, top.values, 1.0, top.indices)
    p_t = torch.softmax(torch.tensor([4.0, 1.0]), -1)
    q = torch.softmax(torch.tensor([3.0, 2.0]), -1)
    assert float(got) == pytest.approx(float((p_t * (p_t / q).log()).sum()), rel=1e-6)


def test_student_equal_to_teacher_gives_zero_soft_loss(tiny_bert, data_dir, teacher, tmp_path, helpers):
    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher, student_layers=[0, 1], alpha=1.0)
    job = prepared(cfg)
    loss, n = job.loss(job.model, first_batch(job))
    assert n == 8 and abs(loss.item()) < 1e-6


# ---------------------------------------------------------------------------------------------
# A 1-layer student cut from the 2-layer teacher


def test_student_layers_pick_the_teachers_layers_and_save_a_plain_model(tiny_bert, data_dir, teacher, tmp_path,
                                                                        helpers):
    from transformers import AutoModelForSequenceClassification

    from tunelab.runs import load_run

    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher, student_layers=[1])
    run_dir, seen = helpers.train_and_capture(cfg)
    before, taught = seen["before"], load_run(teacher).model.state_dict()
    assert torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                       taught["bert.encoder.layer.1.attention.self.query.weight"])
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                           taught["bert.encoder.layer.0.attention.self.query.weight"])
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.bias"):
        assert torch.equal(before[name], taught[name]), name
    assert len(before) == len(taught) - 16  # one BERT layer (16 tensors) fewer

    plain = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    assert plain.config.num_hidden_layers == 1 and len(plain.bert.encoder.layer) == 1
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    torch.testing.assert_close(plain(input_ids=ids).logits, load_run(run_dir).model(input_ids=ids).logits)


def agreement(model, examples, teacher_probs: torch.Tensor) -> float:
    from tunelab.tasks.classification import predict_proba

    probs = predict_proba(model, examples, 16, 0, torch.device("cpu"))
    return float((probs.argmax(-1) == teacher_probs.argmax(-1)).float().mean())


def test_a_one_layer_scratch_student_learns_the_teacher(tiny_bert, data_dir, teacher, tmp_path, helpers):
    from tunelab.runs import load_run
    from tunelab.tasks.classification import make_examples, predict_proba, split_records

    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher, alpha=0.9)
    cfg.model.name, cfg.model.tokenizer, cfg.model.layers, cfg.model.hidden_size = \
        "scratch:transformer", str(tiny_bert), 1, 32
    cfg.train.max_steps, cfg.train.lr = 60, 5e-3
    run_dir, seen = helpers.train_and_capture(cfg)
    losses = [r["loss"] for r in helpers.read_metrics(run_dir, "train")]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])

    t = load_run(teacher)
    recs, src = split_records(cfg, lambda *_: None)["test"]
    ex = make_examples(t.tokenizer, recs, text_field="text", label_field="label",
                       label2id={lab: i for i, lab in enumerate(t.meta["labels"])}, max_length=16, source=src)
    teacher_probs = predict_proba(t.model, ex, 16, 0, torch.device("cpu"))
    model = seen["model"]
    after = agreement(model, ex, teacher_probs)
    model.load_state_dict(seen["before"])
    assert (agreement(model, ex, teacher_probs), after) == pytest.approx((0.5, 0.9167), abs=1e-3)  # pinned


def test_student_layers_need_the_teacher_architecture(tiny_bert, data_dir, teacher, tmp_path, helpers):
    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher, student_layers=[0, 2])
    with pytest.raises(ConfigError, match=r"method.student_layers: got \[0, 2\]; the teacher has 2 layers"):
        prepared(cfg)
    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher, student_layers=[0])
    cfg.model.name, cfg.model.tokenizer = "scratch:transformer", str(tiny_bert)
    with pytest.raises(ConfigError, match="is not the teacher's architecture .bert.; .* set model.name to the "
                                          "teacher's base model"):
        prepared(cfg)


# ---------------------------------------------------------------------------------------------
# Causal LMs


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory, helpers) -> tuple[Path, Path, dict]:
    """(tiny Llama folder, a causal_lm run trained on it, the config data to train a student)."""
    root = tmp_path_factory.mktemp("causal")
    llama = write_tiny_model(root / "llama")
    data = helpers.write_jsonl(root / "alpaca.jsonl", alpaca_records(24))
    base = {"task": "causal_lm", "model": {"name": str(llama), "max_length": 64},
            "data": {"train": str(data), "val_fraction": 0.1, "test_fraction": 0.1},
            "generate": {"samples_in_eval": 0},
            "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "log_every": 1, "seed": 0,
                      "device": "cpu", "precision": "fp32", "eval_every": None,
                      "early_stopping": {"patience": None}}}
    from tunelab.config import config_from_dict

    run = helpers.train_quietly(config_from_dict({**base, "method": {"name": "full"},
                                                  "output_dir": str(root / "teacher")}))
    return llama, run, base


def causal_student(llama_teacher, out: Path, **method):
    from tunelab.config import config_from_dict

    _, run, base = llama_teacher
    return config_from_dict({**base, "output_dir": str(out),
                             "method": {"name": "distill", "teacher": str(run), **method}})


def test_causal_lm_distills_on_labelled_tokens_only(llama_teacher, tmp_path):
    job = prepared(causal_student(llama_teacher, tmp_path / "run", alpha=1.0, temperature=1.0))
    batch = first_batch(job)
    keep = batch["targets"] != -100
    assert 0 < int(keep.sum()) < int(batch["attention_mask"].sum())  # prompts and padding are masked
    loss, n = job.loss(job.model, batch)
    loss = loss.detach()
    assert n == int(keep.sum()) and float(loss) > 0

    def shifted(where):  # move the teacher's hidden states (hence logits) at `where` far away
        def hook(module, args, output):
            output.last_hidden_state[where] += 100.0
            return output
        return distill.decoder_of(job.teacher).register_forward_hook(hook)

    handle = shifted(~keep)
    assert float(job.loss(job.model, batch)[0].detach()) == pytest.approx(float(loss), rel=1e-6)
    handle.remove()
    handle = shifted(keep)
    assert float(job.loss(job.model, batch)[0].detach()) != pytest.approx(float(loss), rel=1e-3)  # the check can fail
    handle.remove()


def test_causal_lm_student_trains_and_reloads(llama_teacher, tmp_path, helpers):
    from transformers import AutoModelForCausalLM

    cfg = causal_student(llama_teacher, tmp_path / "run", student_layers=[1])
    run_dir, seen = helpers.train_and_capture(cfg)
    losses = [r["loss"] for r in helpers.read_metrics(run_dir, "train")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    plain = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    assert plain.config.num_hidden_layers == 1 and plain.model.layers[0].self_attn.layer_idx == 0
    ids = torch.tensor([[2, 40, 41, 42]])
    torch.testing.assert_close(plain(input_ids=ids).logits, seen["model"].eval()(input_ids=ids).logits)


def test_a_causal_student_with_another_vocabulary_is_refused(llama_teacher, tmp_path):
    tok = make_tokenizer()
    tok.add_tokens(["<extra>"])
    make_model(len(tok)).save_pretrained(str(tmp_path / "other"))
    tok.save_pretrained(str(tmp_path / "other"))
    cfg = causal_student(llama_teacher, tmp_path / "run")
    cfg.model.name = str(tmp_path / "other")
    with pytest.raises(TunelabError, match="the teacher's and the student's tokenizers differ .* distillation "
                                           "of causal LMs needs a shared vocabulary"):
        prepared(cfg)


# ---------------------------------------------------------------------------------------------
# The teacher cache


def count_teacher_calls(monkeypatch) -> list[int]:
    """Spy on load_teacher: count the forward calls of every teacher it loads."""
    calls = [0]
    real = distill.load_teacher

    def spy(run_dir):
        run = real(run_dir)
        embeddings = run.model.get_input_embeddings()  # once per forward, whatever part the task calls
        embeddings.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return run

    monkeypatch.setattr(distill, "load_teacher", spy)
    return calls


def train_losses(cfg, helpers) -> list[float]:
    return [r["loss"] for r in helpers.read_metrics(helpers.train_quietly(cfg), "train")]


def test_the_cache_gives_the_same_classification_losses(tiny_bert, data_dir, teacher, tmp_path, helpers,
                                                        monkeypatch):
    calls = count_teacher_calls(monkeypatch)
    make = lambda name, cache: student_config(helpers, tiny_bert, data_dir, tmp_path / name, teacher,  # noqa: E731
                                              cache_teacher=cache)
    plain = train_losses(make("plain", False), helpers)
    assert calls[0] == 3  # one teacher forward per step
    filled = train_losses(make("filled", True), helpers)
    cached = list(Path(tmp_path / "home" / "distill").glob("*.safetensors"))
    assert len(cached) == 1
    calls[0] = 0
    again = train_losses(make("again", True), helpers)
    assert calls[0] == 0  # read from the cache: no teacher forward at all
    assert plain == filled == again  # exactly: the cache holds the numbers an uncached run computes


def test_the_cache_keeps_the_top_k_logits_of_a_vocabulary(llama_teacher, tmp_path, helpers, monkeypatch):
    calls = count_teacher_calls(monkeypatch)
    plain = train_losses(causal_student(llama_teacher, tmp_path / "plain"), helpers)
    train_losses(causal_student(llama_teacher, tmp_path / "filled", cache_teacher=True), helpers)
    calls[0] = 0
    cached = train_losses(causal_student(llama_teacher, tmp_path / "cached", cache_teacher=True), helpers)
    assert calls[0] == 0
    (path,) = Path(tmp_path / "home" / "distill").glob("*.safetensors")
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert stored["values"].shape[1] == stored["indices"].shape[1] == distill.TOP_K  # 64 of 105 token ids
    # The top-64 of 105 logits hold nearly all of the teacher's probability at T = 2: the losses agree to
    # within 2% (the soft loss over the kept ids, renormalised, is a little smaller than over all ids).
    assert cached == pytest.approx(plain, rel=0.02) and cached != plain


# ---------------------------------------------------------------------------------------------
# Errors


def test_a_missing_or_wrong_teacher_is_one_config_error(tiny_bert, data_dir, teacher, llama_teacher, tmp_path,
                                                        helpers):
    cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / "run", teacher)
    cfg.method.teacher = None
    with pytest.raises(ConfigError, match="^method.teacher: distill needs a teacher"):
        helpers.train_quietly(cfg)
    cfg.method.teacher = str(tmp_path)
    with pytest.raises(ConfigError, match=f"^method.teacher: {tmp_path} is not a finished tunelab run"):
        helpers.train_quietly(cfg)
    cfg.method.teacher = str(llama_teacher[1])
    with pytest.raises(ConfigError, match="is a causal_lm run and this run trains classification"):
        helpers.train_quietly(cfg)
    cfg.method.teacher, cfg.method.alpha, cfg.method.temperature = str(teacher), 1.5, 0.0
    with pytest.raises(ConfigError, match=r"2 problems: method.temperature: got 0.0; must be > 0; "
                                          r"method.alpha: got 1.5; .* must be in \[0, 1\]"):
        helpers.train_quietly(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_other_labels_are_refused_naming_both(tiny_bert, teacher, tmp_path, helpers):
    records = [dict(r, label="music" if r["label"] == "food" else r["label"])
               for r in helpers.synthetic_records(10, seed=4)]
    data = helpers.write_jsonl(tmp_path / "other.jsonl", records)
    cfg = helpers.tiny_config(tiny_bert, data, tmp_path / "run",
                              {"method.name": "distill", "method.teacher": str(teacher)})
    with pytest.raises(TunelabError, match=r"the teacher's labels \['food', 'sport', 'tech'\] differ from the "
                                           r"student's \['music', 'sport', 'tech'\]"):
        helpers.train_quietly(cfg)


def test_alpha_is_shared_with_lora_each_keeping_its_default():
    from tunelab.config import MethodConfig, config_from_dict, method_docs
    from tunelab.methods import METHODS, options_of

    assert METHODS.owners("method.alpha") == ["lora", "distill"]
    assert options_of(MethodConfig(name="lora"))["alpha"] == 16.0
    assert options_of(MethodConfig(name="distill", teacher="t"))["alpha"] == 0.5
    assert options_of(MethodConfig(name="lora", alpha=8))["alpha"] == 8
    assert "lora: scaling numerator" in method_docs()["alpha"] and "(default 0.5)" in method_docs()["alpha"]
    with pytest.raises(ConfigError, match="method.alpha applies to lora and distill; method.name is full"):
        config_from_dict({"method": {"name": "full", "alpha": 2}})


def test_seq2seq_rows_with_labels_of_their_own_length_are_cached_exactly(tmp_path, helpers, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent / "seq2seq"))
    from seq2seq_tiny import reverse_pairs, write_tiny_t5

    from tunelab.config import config_from_dict

    t5 = write_tiny_t5(tmp_path / "t5")  # 15 tokens: the cache keeps every logit, so it must be exact
    pairs = helpers.write_jsonl(tmp_path / "pairs.jsonl", reverse_pairs(24))
    base = {"task": "seq2seq", "model": {"name": str(t5), "max_length": 16},
            "data": {"train": str(pairs), "val_fraction": 0.1, "test_fraction": 0.1},
            "generate": {"samples_in_eval": 2, "max_new_tokens": 4},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "log_every": 1, "seed": 0,
                      "device": "cpu", "precision": "fp32", "eval_every": None,
                      "early_stopping": {"patience": None}}}
    teacher_run = helpers.train_quietly(config_from_dict({**base, "method": {"name": "full"},
                                                          "output_dir": str(tmp_path / "teacher")}))
    calls = count_teacher_calls(monkeypatch)

    def losses(name: str, cache: bool) -> list[float]:
        method = {"name": "distill", "teacher": str(teacher_run), "cache_teacher": cache}
        return train_losses(config_from_dict({**base, "method": method, "output_dir": str(tmp_path / name)}),
                            helpers)

    plain, filled = losses("plain", False), losses("filled", True)
    calls[0] = 0
    assert plain == filled == losses("again", True) and calls[0] == 0


# ---------------------------------------------------------------------------------------------
# Gradient accumulation and resume


def test_accumulation_over_micro_batches_of_unequal_token_counts(llama_teacher, tmp_path):
    """One step over a batch equals one step over its rows as micro-batches of 1, 2 and 1 rows (the soft loss
    is a sum over the same tokens as the hard loss, so the loop's normalisation holds)."""
    import copy

    from test_accum_parity import assert_same_training

    job = prepared(causal_student(llama_teacher, tmp_path / "run", alpha=0.7))
    whole = first_batch(job)
    parts = [{k: v[a:b] for k, v in whole.items()} for a, b in ((0, 1), (1, 3), (3, 4))]
    assert len({int((p["targets"] != -100).sum()) for p in parts}) > 1
    start = copy.deepcopy(job.model)
    assert_same_training(lambda: copy.deepcopy(start), whole, parts, job.loss)


def test_resume_goes_on_as_an_uninterrupted_run_reading_the_cache(tiny_bert, data_dir, teacher, tmp_path, helpers,
                                                                  monkeypatch):
    from tunelab.resume import resume_config

    def config(out: str, steps: int):
        cfg = student_config(helpers, tiny_bert, data_dir, tmp_path / out, teacher, cache_teacher=True)
        cfg.train.max_steps, cfg.train.scheduler, cfg.train.checkpoint_every = steps, "constant", 2
        return cfg

    straight = train_losses(config("straight", 4), helpers)
    calls = count_teacher_calls(monkeypatch)
    helpers.train_quietly(config("parts", 2))
    helpers.train_quietly(resume_config(tmp_path / "parts", ["train.max_steps=4"]), resume=True)
    assert calls[0] == 0  # both parts read the cache the straight run wrote
    assert [r["loss"] for r in helpers.read_metrics(tmp_path / "parts", "train")] == straight


@pytest.mark.integration
def test_a_three_layer_minilm_student_from_a_six_layer_run(tmp_path, helpers):
    """The README's example, in miniature: builtin:minilm-l6 on BBC News, layers 0, 2 and 4 of the teacher."""
    from transformers import AutoModelForSequenceClassification

    from tunelab.config import config_from_dict
    from tunelab.runs import load_run

    base = {"model": {"name": "builtin:minilm-l6", "max_length": 32},
            "data": {"train": "builtin:bbc-news", "limit": 40, "val_fraction": 0.02, "test_fraction": 0.02},
            "train": {"max_steps": 2, "batch_size": 8, "log_every": 1, "seed": 0, "device": "cpu",
                      "precision": "fp32"}}
    teacher_run = helpers.train_quietly(config_from_dict({**base, "method": {"name": "full"},
                                                          "output_dir": str(tmp_path / "teacher")}))
    method = {"name": "distill", "teacher": str(teacher_run), "student_layers": [0, 2, 4], "cache_teacher": True}
    run_dir, seen = helpers.train_and_capture(config_from_dict({**base, "method": method,
                                                                "output_dir": str(tmp_path / "student")}))
    taught = load_run(teacher_run).model.state_dict()
    for j, i in enumerate([0, 2, 4]):
        key = "bert.encoder.layer.{}.output.dense.weight"
        assert torch.equal(seen["before"][key.format(j)], taught[key.format(i)])
    plain = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    assert plain.config.num_hidden_layers == 3
    assert plain.num_parameters() == 22_715_141 - 3 * 1_774_464  # the teacher less three MiniLM layers
