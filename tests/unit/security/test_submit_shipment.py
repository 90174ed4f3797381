"""`submit` ships by allow-list: the project's code, the files the config names and what --include adds; never
credentials (by name, case-insensitive, or content) nor what links lead to outside the working dir."""
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


def test_by_default_only_the_code_and_the_configs_local_inputs_are_shipped(workdir):
    plan = plan_shipment(workdir, needed=("data",))
    assert sorted(plan.files) == ["data/alias.txt", "data/corpus.txt", "sentinel/__init__.py"]
    assert plan.other >= 3  # configs/exp.yaml, big.ckpt, .rayignore, ...: nothing asked for them


def test_what_include_adds_still_passes_the_credential_and_ignore_checks(workdir):
    plan = plan_shipment(workdir, include=("*",))
    assert sorted(plan.files) == [".rayignore", "configs/exp.yaml", "data/alias.txt", "data/corpus.txt",
                                  "sentinel/__init__.py"]
    withheld = " ".join(plan.withheld)
    for rel in SECRETS:
        top = rel.split("/")[0]
        assert (f"{top}/ (secret)" in withheld) if top in (".aws", ".ray", ".ssh") else (f"{rel} (secret)" in withheld), rel
    assert "notes/ (ignored)" in withheld


def test_staged_job_folder_holds_only_regular_planned_files(workdir, tmp_path):
    plan = plan_shipment(workdir, needed=("data",))
    dest = stage_working_dir(workdir, {"experiment": "x"}, tmp_path / "job", plan)
    staged = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert staged == sorted([*plan.files, "sentinel-job.yaml"])
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
        plan_shipment(workdir, needed=("data",))


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
    assert captured.out.split() == ["data/corpus.txt", "sentinel/__init__.py", "sentinel-job.yaml"]
    assert "not shipped: .env (secret)" in captured.err and "dry run: nothing sent" in captured.err
    assert "other files not asked for" in captured.err
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
    assert cli.main(["submit", str(config), "--working-dir", str(workdir), "--dry-run", "--include", "*"]) == 0
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


ROUND_THREE = {".envrc": "export OPENAI_API_KEY=sk-" + "a1" * 24, ".ENV": "X=1", ".NETRC": "machine h login u",
               ".AWS/Credentials": "[default]", ".boto": "[Credentials]", ".my.cnf": "[client]",
               ".vault-token": "s.abc", "gcloud-adc/application_default_credentials.json": '{"type": "authorized_user"}',
               "pip.conf": "[global]\nindex-url = https://user:hunter2@pypi.example/simple",
               "terraform.tfvars": 'db = "x"', "notes/keys.txt": "anthropic sk-ant-" + "b" * 40,
               "notes/oauth.json": '{"refresh_token": "1//0g"}'}


@pytest.mark.parametrize("include", [(), ("*",)])
def test_round_three_credentials_are_never_shipped(tmp_path, include):
    """Round three shipped each of these under `submit --dry-run`: names off the list, upper case, content the scan
    did not know. Not shipped by default (nothing asks for them), nor when --include '*' asks for everything."""
    root = tmp_path / "work"
    for rel, text in {**ROUND_THREE, "sentinel/__init__.py": ""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    plan = plan_shipment(root, include=include)
    assert plan.files == ["sentinel/__init__.py"]


def test_a_newline_in_a_file_name_cannot_forge_a_line_of_the_listing(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (workdir / "sentinel" / "x\nnot shipped: .env (secret)").write_text("")
    config = workdir / "configs" / "exp.yaml"
    config.write_text(yaml.safe_dump({"experiment": "x", "models": ["sentinel/tiny-gpt2"], "strategies": ["random"],
                                      "levels": [0.5], "output": str(tmp_path / "shared")}))
    assert cli.main(["submit", str(config), "--working-dir", str(workdir), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "'sentinel/x\\nnot shipped: .env (secret)'" in out and not any(l.startswith("not shipped") for l in out)


def test_the_projects_own_code_is_shipped_whole():
    """The content scan reads credentials, not code: `token = tokenizer.eos_token` is no secret (a broad pattern once
    withheld sentinel/models/loading.py and broke every submitted job)."""
    root = Path(__file__).resolve().parents[3]
    plan = plan_shipment(root)
    code = sorted(p.relative_to(root).as_posix() for top in ("sentinel", "orchestrator") for p in (root / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert not plan.withheld and set(code) <= set(plan.files)
