"""A config with several bad fields names every one of them in its one line, before anything runs (issue #40): a
user fixes a config in one pass instead of one error per attempt. One bad field keeps its own message unchanged."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from orchestrator.spec import parse_spec
from sentinel.contract import SpecError

GOOD = {"experiment": "e", "models": ["sentinel/tiny-gpt2"], "strategies": ["magnitude"], "levels": [0.5],
        "seeds": [0], "data": {"seq_len": 32}}


def test_every_bad_field_is_named_in_one_line():
    raw = {**GOOD, "experiment": "a/b", "levels": [1.5], "seeds": [-1], "max_failures": -2, "colour": "red"}
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    message = str(caught.value)
    assert message.startswith("5 problems in the config: ") and "\n" not in message
    for field in ("config", "experiment", "levels", "seeds", "max_failures"):
        assert f"{field}" in message
    assert "colour" in message  # the unknown key, named


def test_one_bad_field_keeps_its_own_message():
    with pytest.raises(SpecError) as caught:
        parse_spec({**GOOD, "max_failures": -2})
    assert str(caught.value).startswith("max_failures:")


def test_missing_required_fields_are_all_named():
    with pytest.raises(SpecError, match="3 problems in the config: models: is required.*strategies: is required.*"
                                        "levels: is required"):
        parse_spec({"experiment": "e"})


def test_the_command_line_prints_them_in_one_line_and_exits_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**GOOD, "levels": [2], "seeds": ["x"], "output": str(tmp_path / "out")}))
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(config)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 problems in the config: levels" in lines[0] and "seeds" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_defaulted_value_is_called_a_default():
    """The newcomer's round trip: `finetune: {steps: 2}` refused for a warm-up they never wrote."""
    with pytest.raises(SpecError, match=r"warmup_steps: 10 \(10 is the default when it is not set\) must be in "
                                        r"\[0, steps=2\]"):
        parse_spec({**GOOD, "finetune": {"steps": 2}})
    with pytest.raises(SpecError, match=r"warmup_steps: 3 must be in \[0, steps=2\]"):
        parse_spec({**GOOD, "finetune": {"steps": 2, "warmup_steps": 3}})
