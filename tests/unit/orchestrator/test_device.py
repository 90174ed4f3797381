"""Device choice inside a trial, from the GPUs Ray assigned (the absent GPU is the only thing simulated)."""
from __future__ import annotations

import pytest

from orchestrator.trainable import TrialFailed, choose_device


def test_no_gpu_assigned_runs_on_cpu_even_with_auto():
    assert choose_device("auto", [], cuda_available=True, dry_run=False) == ("cpu", "cpu")


def test_assigned_gpu_is_used_when_cuda_exists():
    assert choose_device("auto", ["0"], cuda_available=True, dry_run=False) == ("cuda", "cuda")
    assert choose_device("cuda", ["1"], cuda_available=True, dry_run=False) == ("cuda", "cuda")


def test_cpu_request_ignores_assigned_gpu():
    assert choose_device("cpu", ["0"], cuda_available=True, dry_run=False) == ("cpu", "cpu")


def test_logical_gpu_without_cuda_dry_run_records_cuda_assignment():
    assert choose_device("auto", ["0"], cuda_available=False, dry_run=True) == ("cpu", "cuda")


def test_logical_gpu_without_cuda_fails_clearly():
    with pytest.raises(TrialFailed, match="CUDA is not available"):
        choose_device("auto", ["0"], cuda_available=False, dry_run=False)


def test_cuda_request_without_assigned_gpu_fails():
    with pytest.raises(TrialFailed, match="no GPU"):
        choose_device("cuda", [], cuda_available=True, dry_run=False)
