"""model.max_length is checked against the causal LM's positions by the shared helper (tunelab.models.load)."""
from __future__ import annotations

import pytest
import torch
from causal_helpers import alpaca_records, write_jsonl

from tunelab.config import config_from_dict
from tunelab.errors import TunelabError
from tunelab.tasks.causal_lm import CausalLMJob


@pytest.mark.parametrize("max_length, fails", [(512, False), (513, True)])
def test_causal_max_length_above_the_model_positions_is_an_error(tmp_path, tiny_dir, max_length, fails):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_records(8))
    cfg = config_from_dict({"task": "causal_lm", "model": {"name": str(tiny_dir), "max_length": max_length},
                            "data": {"train": str(train)}, "train": {"device": "cpu"}})
    job = CausalLMJob(cfg, torch.device("cpu"), lambda _: None)
    if fails:  # the tiny Llama has 512 positions
        with pytest.raises(TunelabError, match=r"^model.max_length: got 513; .* handles at most 512 positions; "
                                               r"set model.max_length to 512 or less$"):
            job.prepare()
    else:
        job.prepare()
        assert job.data["train"].examples
