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
    old["finetune"]["seed"] = 0  # a field since removed (the trial's seed always overwrote it): as every old cell held it
    assert spec.trial_id() == digest(old)


def test_a_removed_field_keeps_earlier_ids_and_is_refused_in_new_configs():
    """finetune.seed entered the id but the trial's seed overwrote it: a field that is overwritten does not exist."""
    from sentinel.contract import SpecError

    spec = TrialSpec.from_dict({**SPEC, "finetune": {"steps": 2, "warmup_steps": 0}})
    assert "seed" not in spec.to_dict()["finetune"] and FinetuneConfig.RETIRED == {"seed": 0}
    with pytest.raises(SpecError, match="finetune.seed: unknown key"):
        TrialSpec.from_dict({**SPEC, "finetune": {"steps": 2, "warmup_steps": 0, "seed": 3}})


# an existing field of each part stands for one a later release adds at its default (data has none yet: bos stands in)
LATE = {"": "reference", "data": "bos", "finetune": "method", "generation": "engine"}


@pytest.mark.parametrize("where", list(LATE))
def test_a_results_folder_written_before_a_field_existed_resumes_every_stored_row(where, tmp_path, monkeypatch):
    """The saved cells and the stored rows of an experiment started before the field existed lack it; --resume
    accepts the config, and every stored row is a cell of the grid (nothing runs twice)."""
    import json

    from orchestrator.outputs import SPEC_FILE, prepare
    from orchestrator.results import compact, write_part
    from orchestrator.spec import parse_spec
    from sentinel.trial import failed_record

    contract, name = parts()[where], LATE[where]
    default = next(f for f in dataclasses.fields(contract) if f.name == name).default
    monkeypatch.setattr(contract, "LATE_DEFAULTS", {**contract.LATE_DEFAULTS, name: default})
    raw = {"experiment": "late", "models": ["sentinel/tiny-gpt2"], "strategies": ["magnitude", "random"],
           "levels": [0.25], "seeds": [0, 1], "data": {"seq_len": 32}, "generation": {"new_tokens": 4},
           "finetune": {"steps": 2, "warmup_steps": 0}, "output": str(tmp_path)}
    spec = parse_spec(raw)
    out = spec.output_dir
    prepare(spec, resume=False, overwrite=False, run_id="late-00000001")
    saved = json.loads((tmp_path / "late" / SPEC_FILE).read_text())
    for cell in saved["cells"]:  # as the older release wrote them
        (cell if not where else cell[where]).pop(name)
    (saved["spec"] if not where else saved["spec"][where]).pop(name, None)
    (tmp_path / "late" / SPEC_FILE).write_text(json.dumps(saved))
    write_part(out, [failed_record(c, "x") for c in saved["cells"]], "late-00000001-000000")

    prepare(spec, resume=True, overwrite=False, run_id="late-00000002")  # not refused as a changed config
    assert set(compact(out, spec.to_dict()).status) == {c.trial_id() for c in spec.cells}


@pytest.mark.parametrize("run", ["default", "encoder", "comparison"])
def test_every_published_row_keeps_its_id_under_the_current_rule(run):
    """The rows docs/data publishes were written by earlier releases (finetune.seed in their specs, late fields
    absent): the id the current rule gives each stored spec is the row's id, so resuming those runs finds every row."""
    import json
    from pathlib import Path

    import pandas as pd

    trials = pd.read_parquet(Path(__file__).resolve().parents[3] / "docs" / "data" / run / "trials.parquet",
                             columns=["trial_id", "spec"])
    assert len(trials) >= 39  # the default and the encoder run: 15 strategy cells and 24 random layouts each
    assert [digest(TrialSpec.identity_dict(json.loads(s))) for s in trials.spec] == trials.trial_id.tolist()
