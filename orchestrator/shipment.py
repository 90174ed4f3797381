"""What a cluster job takes with it, by allow-list (docs/SECURITY.md): from the working dir (default: the project
root) only the project's own code (PROJECT_CODE), the local files and folders the config names (a text source, a
model folder) and what `--include PATTERN` adds; inside those, never results/, .venv, .git, caches, what
.gitignore / .rayignore match, or credentials by name (case-insensitive) or content (keys of the common providers,
tokens, passwords in URLs). A link out of the folder is refused; the resolved config goes as `sentinel-job.yaml` at
its root. Everything else stays, counted in one line."""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.ray_jobs import SubmitError

JOB_CONFIG = "sentinel-job.yaml"  # the resolved config, at the root of the job's working dir
TOP_LEVEL_EXCLUDES = ("results", ".venv", ".git")  # never shipped: outputs, the local venv, history
ANY_LEVEL_EXCLUDES = ("__pycache__", ".pytest_cache", "*.pyc", "*.egg-info")


PROJECT_CODE = ("sentinel", "orchestrator", "pyproject.toml")  # the project's own code, at the working dir's root

# Never shipped, whatever the ignore files say or --include asks: credentials a working dir may hold, matched on the
# lower-cased name (docs/SECURITY.md)
SECRET_FILES = (".env", ".env.*", "*.env", ".envrc", ".boto", ".my.cnf", ".vault-token", "*.tfvars", "*.tfvars.json",
                "application_default_credentials.json", "*credentials*", ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", ".dockercfg",
                "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.p12", "*.pfx", "*.kdbx",
                "*.keystore", "*.jks", "auth_token", "credentials", "credentials.*", "*.tfstate", "*.tfstate.*",
                "secrets.*", "service-account*.json")
SECRET_DIRS = (".ssh", ".aws", ".ray", ".gnupg", ".docker", ".kube", ".azure", "gcloud", ".password-store", ".terraform",
               ".git", ".cache", ".config")  # at any depth: a nested repo's config holds tokens; caches and user
#                                               config hold hub tokens (huggingface/token) and CLI logins (gh/hosts.yml)
SECRET_FILES += (".pgpass", ".s3cfg", "kubeconfig", "*.kubeconfig", ".bash_history", ".zsh_history", "*_history",
                 ".htpasswd", "token", "hosts.yml")
# what a file *is*, read from its first bytes: a private key or a token of a well-known service, whatever its name
SECRET_CONTENT = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|(?:ghp|gho|ghu|ghs)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{40,}"
    rb"|hf_[A-Za-z0-9]{30,}|xox[baprs]-[A-Za-z0-9-]{10,}|sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}"
    rb"|glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}"
    # a credential field with a literal value (JSON, INI, YAML, env), never a variable in code (`token = f(x)`)
    rb"|(?i:refresh_token|client_secret|aws_secret_access_key|secret_access_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+_.-]{4,}"
    rb"|[a-z][a-z0-9+.-]*://[^/\s:@{}()]+:[^/\s@{}()]+@[A-Za-z0-9.-]")  # user:password@host in a URL (a pip.conf)
SECRET_SCAN_BYTES = 64 * 1024
MAX_FILE_BYTES = 100 * 2**20  # a file over this is withheld and said (a data set, a checkpoint, a sparse file)
MAX_SHIPMENT_BYTES = 500 * 2**20  # Ray's own limit for a working_dir package
IGNORE_FILES = (".gitignore", ".rayignore")  # at the working dir's root


@dataclass
class Shipment:
    """What `submit` ships from a working dir: files (relative paths) and what it withheld, with why."""

    files: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)  # "path (secret)", "path (ignored)", ...
    size: int = 0
    other: int = 0  # files left because neither the code, the config nor --include asks for them


def _ignore_patterns(source: Path) -> list[str]:
    """Patterns of the root's .gitignore and .rayignore (negations are not honoured: nothing is re-included)."""
    patterns = []
    for name in IGNORE_FILES:
        try:
            lines = (source / name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        patterns += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "!"))]
    return patterns


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        if fnmatch.fnmatch(rel if anchored else name, pattern.lstrip("/")):
            return True
    return False


def _secret(rel: str, is_dir: bool) -> bool:
    name = rel.rsplit("/", 1)[-1].lower()  # .ENV, .NETRC and .AWS/Credentials are the same files to their tools
    if is_dir:
        return name in SECRET_DIRS
    return any(fnmatch.fnmatch(name, p) for p in SECRET_FILES)


def plan_shipment(source: Path, needed: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> Shipment:
    """The files `submit` would ship from `source`, walking it without following links.

    Shipped: only PROJECT_CODE, the `needed` paths (relative to `source`: the local files the config names) and
    files matching an `include` pattern (a glob on the path or the name). Within those, left out: results/, .venv,
    .git at the top; caches anywhere; what the root's .gitignore / .rayignore match; credentials by name
    (SECRET_FILES, SECRET_DIRS) or content, always; anything not a regular file. A link is shipped as the file it
    points to only when that file is inside `source`; a link that leads outside is refused (SubmitError), because
    Ray's packaging would follow it and ship what it points to. `other` counts the files left because nothing
    asked for them.
    """
    source = source.resolve()
    allow = tuple(PROJECT_CODE) + tuple(p.strip("/") for p in needed if p.strip("/") not in ("", "."))
    patterns = _ignore_patterns(source)
    caches = ANY_LEVEL_EXCLUDES
    plan = Shipment()
    for folder, dirs, files in os.walk(source, followlinks=False):
        base = Path(folder)
        rel_base = base.relative_to(source).as_posix()
        for name in sorted(dirs):
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            path = base / name
            why = ("excluded" if (rel_base == "." and name in TOP_LEVEL_EXCLUDES) or any(fnmatch.fnmatch(name, c) for c in caches)
                   else "secret" if _secret(rel, True) else "ignored" if _ignored(rel, True, patterns) else None)
            if why is None and not _allowed(rel, True, allow, include):
                plan.other += sum(len(f) for _, _, f in os.walk(path, followlinks=False))
                dirs.remove(name)
                continue
            if why is None and path.is_symlink():
                _check_link(path, source, rel)
                why = "link to a folder inside (shipped where it is)"
            if why is not None:
                dirs.remove(name)
                if why != "excluded":
                    plan.withheld.append(f"{rel}/ ({why})")
        for name in sorted(files):
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            path = base / name
            if any(fnmatch.fnmatch(name, c) for c in caches) or _ignored(rel, False, patterns):
                continue
            if not _allowed(rel, False, allow, include) and not _secret(rel, False):
                plan.other += 1
                continue
            if _secret(rel, False):
                plan.withheld.append(f"{rel} (secret)")
                continue
            if path.is_symlink():
                _check_link(path, source, rel)
                target = path.resolve().relative_to(source).as_posix()
                if _secret_path(target):  # innocent.txt -> .env: judged by what it points at, not by its name
                    plan.withheld.append(f"{rel} (secret: a link to {target})")
                    continue
            if not path.is_file():  # a fifo, a socket, a dangling link
                plan.withheld.append(f"{rel} (not a regular file)")
                continue
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                plan.withheld.append(f"{rel} (too large: {size / 2**20:,.0f} MiB, over {MAX_FILE_BYTES // 2**20} MiB)")
                continue
            if _secret_content(path):
                plan.withheld.append(f"{rel} (secret: holds a private key or a token)")
                continue
            plan.files.append(rel)
            plan.size += size
    if plan.size > MAX_SHIPMENT_BYTES:
        raise SubmitError(f"--working-dir: {plan.size / 2**20:,.0f} MiB to ship, over the {MAX_SHIPMENT_BYTES // 2**20} "
                          "MiB a job's working dir may hold; list large files in .rayignore")
    plan.files.sort()
    return plan


def _secret_path(rel: str) -> bool:
    """Whether a path inside the folder is a credential by name: its file name, or any folder on its way."""
    parts = rel.lower().split("/")
    return _secret(rel, False) or any(part in SECRET_DIRS for part in parts[:-1])


def _allowed(rel: str, is_dir: bool, allow: tuple[str, ...], include: tuple[str, ...]) -> bool:
    """Whether `rel` is (a folder on the way to, or inside) an allowed path, or matches an --include pattern."""
    for root in allow:
        if rel == root or rel.startswith(f"{root}/") or (is_dir and root.startswith(f"{rel}/")):
            return True
    if is_dir:
        return bool(include)  # a file below may match a pattern
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in include)


def shown(rel: str) -> str:
    """A path as the terminal shows it: a name with a newline or another control character is quoted, so it cannot
    forge a line of the listing."""
    return rel if rel.isprintable() else ascii(rel)


def _secret_content(path: Path) -> bool:
    """Whether a file's first bytes hold a private key or a well-known service's token."""
    try:
        with open(path, "rb") as f:
            return bool(SECRET_CONTENT.search(f.read(SECRET_SCAN_BYTES)))
    except OSError:
        return False


def _check_link(path: Path, source: Path, rel: str) -> None:
    target = path.resolve()
    if target != source and source not in target.parents:
        raise SubmitError(f"--working-dir: {rel!r} is a link to {str(target)!r}, outside the folder shipped; "
                          "remove it or list it in .rayignore (submit never ships what lies outside)")


def stage_working_dir(source: Path, raw_config: dict[str, Any], dest: Path, plan: Shipment | None = None) -> Path:
    """Copies the planned files of `source` (plan_shipment) into `dest` as regular files and writes the job's
    config there.

    Args:
        source: the working dir to ship.
        raw_config: the resolved config mapping (written as sentinel-job.yaml).
        dest: a folder that does not exist yet.
        plan: plan_shipment(source), if already made.
    Returns:
        `dest`.
    """
    plan = plan or plan_shipment(source)
    source = source.resolve()
    dest.mkdir(parents=True)
    for rel in plan.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)  # the content, never a link
    (dest / JOB_CONFIG).write_text(yaml.safe_dump(raw_config, sort_keys=False), encoding="utf-8")
    return dest
