"""`sentinel-bench config --defaults` prints every config key at its default, as YAML that reads back into a valid
config once the required keys are filled (issue #40: the defaults were written nowhere a user looks)."""
from __future__ import annotations

import yaml

from orchestrator import cli
from orchestrator.spec import DEFAULTS, parse_spec
from sentinel.finetune import FinetuneConfig
from sentinel.trial import DataSpec


def test_the_defaults_are_the_contract_s_and_read_back_as_a_config(capsys):
    assert cli.main(["config", "--defaults"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"] == DataSpec().to_dict()  # from the contract itself, nothing typed twice
    assert printed["finetune"]["warmup_steps"] == FinetuneConfig().warmup_steps == 10
    assert printed["seeds"] == list(DEFAULTS["seeds"]) and printed["output"] == DEFAULTS["output"]
    filled = {**printed, "experiment": "e", "models": ["sentinel/tiny-gpt2"], "strategies": ["magnitude"],
              "levels": [0.3]}
    assert parse_spec(filled).to_dict()["data"] == printed["data"]  # a user's starting point is a valid config
