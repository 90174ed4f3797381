"""`submit` ships the working dir's code and data, never its credentials nor what links lead to outside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.ray_jobs import SubmitError
from orchestrator.shipment import plan_shipment, stage_working_dir

SECRETS = [".env", ".env.local", ".netrc", ".aws/credentials", ".ray/auth_token", ".ssh/id_ed25519", ".ssh/id_rsa.pub",
           "deploy/server.pem", "deploy/tls.key", ".git-credentials", ".pypirc", "conf/credentials.json"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    for rel in ["sentinel/__init__.py", "configs/exp.yaml", "data/corpus.txt", "notes/private.txt", "big.ckpt",
                "results/old/trials.parquet", "pkg/__pycache__/x.pyc", *SECRETS]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}")
    (root / ".rayignore").write_text("# large or private\n*.ckpt\nnotes/\n")
    (root / "data" / "alias.txt").symlink_to(root / "data" / "corpus.txt")  # inside: shipped as a file
    return root


def test_plan_withholds_secrets_and_ignored_files_and_ships_code_and_data(workdir):
    plan = plan_shipment(workdir)
    assert sorted(plan.files) == [".rayignore", "configs/exp.yaml", "data/alias.txt", "data/corpus.txt",
                                  "sentinel/__init__.py"]
    withheld = " ".join(plan.withheld)
    for rel in SECRETS:
        top = rel.split("/")[0]
        assert (f"{top}/ (secret)" in withheld) if top in (".aws", ".ray", ".ssh") else (f"{rel} (secret)" in withheld), rel
    assert "notes/ (ignored)" in withheld


def test_staged_job_folder_holds_only_regular_planned_files(workdir, tmp_path):
    dest = stage_working_dir(workdir, {"experiment": "x"}, tmp_path / "job")
    staged = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert staged == sorted([*plan_shipment(workdir).files, "sentinel-job.yaml"])
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
    assert (dest / "data" / "alias.txt").read_text() == "content of data/corpus.txt"


@pytest.mark.parametrize("target", ["/etc/hostname", "outside-dir"])
def test_a_link_out_of_the_folder_is_refused_naming_it(workdir, tmp_path, target):
    if target == "outside-dir":
        (tmp_path / "outside-dir").mkdir()
        (tmp_path / "outside-dir" / "secret.txt").write_text("x")
        target = str(tmp_path / "outside-dir")
    os.symlink(target, workdir / "data" / "escape")
    with pytest.raises(SubmitError, match=r"^--working-dir: 'data/escape' is a link to .* outside the folder"):
        plan_shipment(workdir)


def test_submit_dry_run_lists_the_shipment_and_sends_nothing(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = workdir / "configs" / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "x", "models": ["sentinel/tiny-gpt2"], "strategies": ["random"], "levels": [0.5],
        "data": {"source": "data/corpus.txt"}, "output": str(tmp_path / "shared")}))
    (workdir / "data" / "corpus.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(300)))
    code = cli.main(["submit", str(config), "--working-dir", str(workdir), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.split() == sorted(plan_shipment(workdir).files) + ["sentinel-job.yaml"]
    assert "not shipped: .env (secret)" in captured.err and "dry run: nothing sent" in captured.err
    assert not (tmp_path / "shared").exists()


def test_dry_run_withholds_credentials_by_link_by_nesting_by_content_and_by_size(workdir, tmp_path, capsys, monkeypatch):
    """What a file *is* decides, not only its name: links to secrets, a nested repo's config, tokens in caches and
    user config, history files, a key under an innocent name, and a 1 GB sparse file are not shipped, each said."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    os.symlink(workdir / ".env", workdir / "innocent.txt")  # inside, but a credential
    os.symlink(workdir / ".ssh" / "id_ed25519", workdir / "data" / "notes.md")
    for rel, text in [("vendor/lib/.git/config", "[remote]\nurl = https://user:tok@host/x"),
                      (".cache/huggingface/token", "hf_" + "a" * 34), (".config/gh/hosts.yml", "oauth_token: x"),
                      (".pgpass", "h:5432:*:u:pw"), (".s3cfg", "secret_key = x"), ("deploy/kubeconfig", "token: x"),
                      (".bash_history", "export AWS_SECRET=x"), ("docs/readme.txt", "-----BEGIN RSA PRIVATE KEY-----"),
                      ("data/keys.csv", "id,AKIA" + "A" * 16)]:
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with open(workdir / "data" / "huge.bin", "wb") as f:  # sparse: takes no disk, claims 1 GB
        f.truncate(2**30)
    config = workdir / "configs" / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "x", "models": ["sentinel/tiny-gpt2"], "strategies": ["random"], "levels": [0.5],
        "data": {"source": "data/corpus.txt"}, "output": str(tmp_path / "shared")}))
    (workdir / "data" / "corpus.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(300)))
    assert cli.main(["submit", str(config), "--working-dir", str(workdir), "--dry-run"]) == 0
    captured = capsys.readouterr()
    shipped = captured.out.split()
    for rel in ("innocent.txt", "data/notes.md", "vendor/lib/.git/config", ".cache/huggingface/token",
                ".config/gh/hosts.yml", ".pgpass", ".s3cfg", "deploy/kubeconfig", ".bash_history", "docs/readme.txt",
                "data/keys.csv", "data/huge.bin"):
        assert rel not in shipped, rel
    for said in ("innocent.txt (secret: a link to .env)", "data/notes.md (secret: a link to .ssh/id_ed25519)",
                 "vendor/lib/.git/ (secret)", ".cache/ (secret)", ".config/ (secret)", ".pgpass (secret)",
                 "docs/readme.txt (secret: holds a private key or a token)", "data/keys.csv (secret: holds",
                 "data/huge.bin (too large: 1,024 MiB, over 100 MiB)"):
        assert said in captured.err, said
    assert "data/corpus.txt" in shipped
