"""The files under cluster/ parse, and hold what the code and cluster/README.md rely on."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc is not None]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["template"]["spec"]["containers"]


def test_every_cluster_yaml_parses():
    names = sorted(str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*.yaml"))
    assert names == ["aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
    for name in names:
        assert load_all(name), name


def test_aws_launcher_has_gpu_workers_token_auth_and_private_dashboard():
    (config,) = load_all("aws.yaml")
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    workers = config["available_node_types"]["gpu_worker"]
    assert head["resources"]["CPU"] == 0
    assert workers["resources"]["GPU"] >= 1 and workers["node_config"]["InstanceType"].startswith("g5.")
    assert 0 <= workers["min_workers"] <= workers["max_workers"] <= config["max_workers"]
    start = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in start if "ray start" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # the project is installed on every node; the head gets the CPU torch wheel, workers the CUDA one
    assert any("pip install -e" in c and "sentinel-bench" in c for c in config["head_setup_commands"])
    assert any("pip install -e" in c and "sentinel-bench" in c for c in config["worker_setup_commands"])
    assert any("whl/cpu" in c for c in config["head_setup_commands"])
    assert not any("whl/cpu" in c for c in config["worker_setup_commands"])
    ssh_rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in ssh_rules] == [(22, 22)]
    assert all(not ip["CidrIp"].startswith("0.0.0.0") for r in ssh_rules for ip in r["IpRanges"])


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["authOptions"]["mode"] == "token"
    major, minor, _ = (int(x) for x in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # token auth needs Ray 2.52+
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g))]
    assert gpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in containers(group):
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert c["image"].endswith("-gpu")


def test_kuberay_raycluster_gpu_workers_and_token_auth():
    (cluster,) = load_all("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_ray_cluster_spec(cluster["spec"])


def test_kuberay_rayjob_runs_sentinel_bench_on_a_shipped_config():
    (job,) = load_all("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"])
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["sentinel-bench", "run"] and "--address" in words and "auto" in words
    config = words[2].removeprefix("/home/ray/sentinel-bench/")  # where cluster/Dockerfile puts the project
    assert (REPO / config).is_file(), config
    sets = dict(w.split("=", 1) for w in words if "=" in w)
    assert sets["output"].startswith("s3://") and sets["storage_path"].startswith("s3://")
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_dockerfile_installs_the_project_and_copies_configs():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{BASE\}", text, re.M) and "rayproject/ray:2.60.0" in text
    assert "COPY --chown=ray:users configs ./configs" in text and 'pip install --no-cache-dir -e ".' in text


def test_slurm_script_starts_ray_runs_the_experiment_and_stops_ray():
    path = CLUSTER / "slurm.sbatch"
    text = path.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert {"job-name", "nodes", "ntasks-per-node", "cpus-per-task", "gres", "time", "output"} <= set(directives)
    assert directives["gres"].startswith("gpu:")
    assert text.startswith("#!/bin/bash") and "set -euo pipefail" in text
    assert re.search(r"srun .*\n\s*ray start --head --block --node-ip-address", text)
    assert re.search(r"srun .*\n\s*ray start --block --address=", text)
    assert "--dashboard-host=127.0.0.1" in text and "export RAY_AUTH_MODE=token" in text
    assert 'sentinel-bench run "$CONFIG" --address auto' in text
    assert "trap cleanup EXIT" in text and "ray stop" in text
    bash = shutil.which("bash")
    result = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["README.md", "aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                                  "slurm.sbatch"])
def test_repo_paths_named_in_cluster_files_exist(name):
    text = (CLUSTER / name).read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:configs|cluster|docs)/[\w./-]+\.(?:yaml|md|sbatch)|cluster/Dockerfile)",
                           text))
    assert paths or name != "README.md"
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing
