"""The causal-LM side of the command line: chat commands and Ctrl-C, and predict / eval with other fields
and generation settings on a tiny trained Llama."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from causal_helpers import alpaca_records, write_jsonl
from tunelab.cli import main
from tunelab.config import config_from_dict
from tunelab.generation import CHAT_COMMANDS, chat_loop

QUIET = lambda *a, **k: None  # noqa: E731


class FakeModel:
    """Answers each prompt with the next of `replies`; KeyboardInterrupt in the list is raised mid-reply
    (after part of it was 'streamed'), as when the user presses Ctrl-C."""

    def __init__(self, tok, replies: list):
        self.tok, self.replies, self.prompts = tok, list(replies), []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, streamer=None, **kwargs):
        self.prompts.append(self.tok.decode(input_ids[0]))
        reply = self.replies.pop(0)
        if reply is KeyboardInterrupt:
            print("half an ans", end="")
            raise KeyboardInterrupt
        ids = torch.tensor([self.tok(reply, add_special_tokens=False)["input_ids"]])
        return torch.cat([input_ids, ids], 1)


def chat(tok, lines, replies, system=None):
    """(conversation, what the chat wrote, the fake model) after feeding `lines`."""
    model, written = FakeModel(tok, replies), []
    try:
        messages = chat_loop(model, tok, {"max_new_tokens": 4}, system=system, lines=lines, write=written.append)
    except KeyboardInterrupt:  # would stop the whole pytest session, not just fail this test
        pytest.fail("Ctrl-C escaped chat_loop (the chat would quit instead of stopping the reply)")
    return messages, "\n".join(written), model


def test_help_and_unknown_commands_are_answered_locally(tok):
    messages, written, model = chat(tok, ["/help", "/frobnicate now", "hi", "/exit", "never read"], ["yo"])
    assert model.prompts and all("/help" not in p and "/frobnicate" not in p for p in model.prompts)
    assert len(model.prompts) == 1  # only "hi" reached the model
    assert all(cmd in written for cmd in CHAT_COMMANDS) and "unknown command /frobnicate" in written
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_a_double_slash_sends_a_line_that_starts_with_a_slash(tok):
    messages, _, model = chat(tok, ["//etc is a folder"], ["yes"])
    assert messages[0] == {"role": "user", "content": "/etc is a folder"}
    assert "/etc is a folder" in model.prompts[0] and "//etc" not in model.prompts[0]


def test_ctrl_c_during_a_reply_stops_it_and_the_chat_goes_on(tok, capsys):
    messages, written, model = chat(tok, ["first", "second", "third"], ["one", KeyboardInterrupt, "three"],
                                    system="Be brief.")
    assert "reply stopped" in written
    # the stopped question and its partial answer are dropped; the conversation before and after stays
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
                        {"role": "user", "content": "third"}, {"role": "assistant", "content": "three"}]
    assert "second" not in model.prompts[2] and "first" in model.prompts[2]


def test_ctrl_c_at_the_prompt_quits(tok):
    def lines():
        yield "hi"
        raise KeyboardInterrupt  # Ctrl-C while waiting for input

    messages, _, _ = chat(tok, lines(), ["yo"])
    assert [m["content"] for m in messages] == ["hi", "yo"]


# ---------------------------------------------------------------------------------------------
# predict / eval of a causal run with other fields and settings


@pytest.fixture(scope="module")
def causal_run(tiny_dir, tmp_path_factory) -> Path:
    from tunelab.run import train

    base = tmp_path_factory.mktemp("cli-causal")
    data = write_jsonl(base / "alpaca.jsonl", alpaca_records(40))
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(tiny_dir), "max_length": 128},
        "data": {"train": str(data)}, "method": {"name": "full"},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1, "scheduler": "constant",
                  "early_stopping": {"metric": "loss"}},
        "generate": {"max_new_tokens": 8, "samples_in_eval": 0}, "output_dir": str(base / "run")})
    return train(cfg, show_progress=False, log=QUIET)


def predicted(capsys) -> list[str]:
    return [json.loads(line)["generated"] for line in capsys.readouterr().out.splitlines()]


def test_predict_takes_generation_settings(causal_run, capsys):
    assert main(["predict", str(causal_run), "--text", "Add 1 and 2."]) == 0
    full = predicted(capsys)[0]
    assert main(["predict", str(causal_run), "--text", "Add 1 and 2.", "generate.max_new_tokens=2"]) == 0
    short = predicted(capsys)[0]
    assert len(full) > 2 and len(short) <= 2 and full.startswith(short)  # one character per token


def test_predict_reads_another_text_field(causal_run, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"body": "Add 1 and 2."}])
    assert main(["predict", str(causal_run), "--input", str(source)]) == 2
    assert "cannot tell the data format" in capsys.readouterr().err
    assert main(["predict", str(causal_run), "--input", str(source), "--text-field", "body"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["body"] == "Add 1 and 2." and isinstance(rows[0]["generated"], str)


def test_eval_takes_generation_settings(causal_run, capsys):
    assert main(["eval", str(causal_run), "generate.samples_in_eval=2"]) == 0
    metrics = json.loads((causal_run / "eval-test.json").read_text())
    assert metrics["generated"] == 2 and len(metrics["samples"]) == 2
    assert main(["eval", str(causal_run), "--data", str(causal_run / "nope.jsonl"), "--label-field", "x"]) == 2
    assert "has no labels" in capsys.readouterr().err


def test_chat_command_in_a_real_process_reads_stdin_until_ctrl_d(tiny_dir):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "chat", str(tiny_dir), "generate.max_new_tokens=3"],
                          input="/help\n/nonsense\nhi\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "list these commands" in proc.stdout and "unknown command /nonsense" in proc.stdout
    assert proc.stdout.count("bot> ") == 1  # only "hi" went to the model; end of input quits
