"""`sentinel-bench extract`: a trial's model rebuilt from its row, checked against the row, loadable with its
tokenizer; bad requests one line and exit 2 before any model is loaded."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from orchestrator import cli


def trial_row(results_dir, strategy: str = "magnitude", level: float = 0.5) -> pd.Series:
    trials = pd.read_parquet(results_dir / "trials.parquet")
    return trials[(trials.strategy == strategy) & (trials.level == level) & (trials.status == "ok")].iloc[0]


@pytest.mark.parametrize("stage", ["pruned", "recovered"])
def test_an_extracted_model_is_the_rows_model_and_loads_with_its_tokenizer(results_dir, tmp_path, capsys, stage):
    from sentinel.eval import count_parameters
    from sentinel.models import head_layout
    from sentinel.models.loading import load_model

    row = trial_row(results_dir)
    out = tmp_path / "model"
    assert cli.main(["extract", str(results_dir), "--trial", row.trial_id[:12], "--stage", stage,
                     "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"after {stage}: perplexity" in said and str(out) in said
    model, tokenizer = load_model(str(out))
    assert count_parameters(model) == row.params_after
    assert head_layout(model).total_heads == row.heads_total - row.heads_pruned
    assert tokenizer("a sentence").input_ids  # the tokenizer came along
    if stage == "recovered":  # recovery changed weights: the two stages are different models
        pruned_out = tmp_path / "pruned"
        cli.main(["extract", str(results_dir), "--trial", row.trial_id, "--out", str(pruned_out)])
        pruned = load_model(str(pruned_out))[0]
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), pruned.state_dict().values()))


def test_a_row_the_rebuilt_model_does_not_match_writes_nothing(results_dir, tmp_path, capsys):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    row = trial_row(results_dir)
    trials.loc[trials.trial_id == row.trial_id, "pruned"] = row.pruned * 1.01  # a row this machine cannot reproduce
    folder = tmp_path / "edited"
    folder.mkdir()
    trials.to_parquet(folder / "trials.parquet")
    assert cli.main(["extract", str(folder), "--trial", row.trial_id, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "where the row says" in err[0] and "nothing written" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--trial", "nope"], "--trial: no trial in"),
    (["--stage", "dense"], "--stage: 'dense' is not one of pruned, recovered"),
    (["--out", "{tmp}/file.txt"], "exists and is not a folder"),
    (["--out", "{tmp}/full"], "is not empty; pass --overwrite"),
    (["--out", "{tmp}/full", "--overwrite"], "holds files no extract wrote"),
    (["--out", "{tmp}/missing/deeper"], "does not exist"),
])
def test_bad_requests_are_one_line_and_exit_2(results_dir, tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    row = trial_row(results_dir)
    argv = {"--trial": row.trial_id, "--out": str(tmp_path / "new")}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = value.replace("{tmp}", str(tmp_path))
    flat = [x for pair in argv.items() for x in pair] + (["--overwrite"] if "--overwrite" in args else [])
    assert cli.main(["extract", str(results_dir), *flat]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_a_trial_that_failed_has_no_model_to_extract(results_dir, tmp_path, capsys):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    failed = trials[trials.status != "ok"].iloc[0]
    assert cli.main(["extract", str(results_dir), "--trial", failed.trial_id, "--out", str(tmp_path / "o")]) == 2
    assert "only a finished trial has a model to rebuild" in capsys.readouterr().err
