"""One rule keeps trial ids stable: a field added later to any part of a trial (the trial, data, finetune,
generation...) is left out of the id while it holds its default, so a resumed run finds every earlier row."""
from __future__ import annotations

import dataclasses

import pytest

from sentinel.contract import Contract
from sentinel.finetune import FinetuneConfig
from sentinel.result import digest
from sentinel.trial import DataSpec, GenerationSpec, TrialSpec

SPEC = {"model": "sentinel/tiny-gpt2", "strategy": "magnitude", "level": 0.25, "seed": 1,
        "generation": {"new_tokens": 4}, "data": {"seq_len": 32}}


def parts() -> dict[str, type[Contract]]:
    """Every contract a trial is made of, by the field that holds it ("" for the trial itself)."""
    return {"": TrialSpec, **{f.name: f.metadata["contract"] for f in dataclasses.fields(TrialSpec)
                              if f.metadata.get("contract")}}


def test_every_part_of_a_trial_is_a_contract_with_the_same_rule():
    assert set(parts()) == {"", "data", "finetune", "generation"}
    assert {DataSpec, FinetuneConfig, GenerationSpec, TrialSpec} == set(parts().values())


@pytest.mark.parametrize("where", ["", "data", "finetune", "generation"])
def test_a_defaulted_field_added_to_any_part_keeps_earlier_ids(where, monkeypatch):
    spec = TrialSpec.from_dict(SPEC)
    before = spec.trial_id()
    contract = parts()[where]
    # as a release that adds `new_option` (default 7) to that part would write it into every spec dict
    monkeypatch.setattr(contract, "LATE_DEFAULTS", {**contract.LATE_DEFAULTS, "new_option": 7})
    plain = spec.to_dict()
    (plain if not where else plain[where])["new_option"] = 7
    assert digest(TrialSpec.identity_dict(plain)) == before
    (plain if not where else plain[where])["new_option"] = 8  # set to anything else, it is a different cell
    assert digest(TrialSpec.identity_dict(plain)) != before


def test_a_results_folder_written_before_a_late_field_resumes_with_the_same_ids(tmp_path):
    """The ids the old rule gave (late fields of the trial and of finetune dropped) are the ids the one rule gives."""
    spec = TrialSpec.from_dict({**SPEC, "generation": None, "finetune": {"steps": 2, "warmup_steps": 0}})
    old = spec.to_dict()
    for name in TrialSpec.LATE_DEFAULTS:
        old.pop(name)
    for name in FinetuneConfig.LATE_DEFAULTS:
        old["finetune"].pop(name)
    assert spec.trial_id() == digest(old)
