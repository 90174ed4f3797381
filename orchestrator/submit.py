"""Cluster runs as Ray jobs: `sentinel-bench submit | status | logs`.

    sentinel-bench submit CONFIG --address http://HEAD:8265 [--working-dir DIR] [--pip PKG ...] [--set key=value ...]
    sentinel-bench status JOB --address http://HEAD:8265
    sentinel-bench logs JOB --address http://HEAD:8265 [--follow]

`submit` validates the config here, before anything reaches the cluster (`load_spec`, run from the working dir
so relative paths mean what they will mean in the job), then ships a copy of the working dir (default: the
project root, without results/, .venv, .git, what .gitignore / .rayignore match, and credentials by name; a
link out of the folder is refused; `--dry-run` lists the files) plus the resolved config as
`sentinel-job.yaml` through Ray's JobSubmissionClient. The job's entrypoint is `sentinel-bench run sentinel-job.yaml --address auto`.

Results must land on shared storage (an absolute NFS path or s3://...): the job runs in a temporary copy of the
working dir, so a relative `output` would vanish with it and is refused.

The token is read the way Ray reads it (RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH, then
~/.ray/auth_token) and sent as `Authorization: Bearer ...`; it is never printed and never shipped with the job.
Exit codes: 0 done; 2 bad input (one line on stderr: unreachable address, missing or wrong token, invalid
config, unknown job id).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlparse

import yaml

from orchestrator.storage import is_uri
from sentinel.contract import SpecError

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec

JOB_CONFIG = "sentinel-job.yaml"  # the resolved config, at the root of the job's working dir
TOP_LEVEL_EXCLUDES = ("results", ".venv", ".git")  # never shipped: outputs, the local venv, history
ANY_LEVEL_EXCLUDES = ("__pycache__", ".pytest_cache", "*.pyc", "*.egg-info")
CONNECT_TIMEOUT_S = 5.0  # an address that does not answer within this is reported as unreachable
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


class SubmitError(SpecError):
    """Bad input to submit/status/logs. The message is one line naming what is wrong and what to do."""


# ------------------------------------------------------------------------------------------ connection


def resolve_address(address: str | None) -> str:
    """The job server URL from --address or RAY_ADDRESS.

    Args:
        address: the --address value, or None to use the RAY_ADDRESS environment variable.
    Returns:
        An http(s)://host:port URL (http:// is assumed when no scheme is given).
    Raises:
        SubmitError: no address, or one that is not a job server URL (ray://, auto, a GCS address).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("--address: missing; give the job server, e.g. --address http://127.0.0.1:8265 "
                          "(or set RAY_ADDRESS)")
    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(f"--address: {address!r} is not a job server URL; expected http://HEAD:8265 "
                          "(the dashboard port, not ray:// or the GCS port)")
    return url.rstrip("/")


def read_token() -> tuple[str | None, str]:
    """The cluster token, looked up in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.

    Returns:
        (token or None, where it came from: for messages; never the token itself).
    Raises:
        SubmitError: RAY_AUTH_TOKEN_PATH is set but the file cannot be read or is empty (Ray refuses that too).
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    env_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(env_path or DEFAULT_TOKEN_PATH).expanduser()
    source = f"RAY_AUTH_TOKEN_PATH ({path})" if env_path else str(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        if env_path:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH: {env_path!r} cannot be read; point it at the cluster's "
                              "token file (`ray get-auth-token` on the head prints the token)") from None
        return None, f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, {path}"
    if not token:
        if env_path:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH: {env_path!r} is empty")
        return None, f"{path} is empty"
    return token, source


def _check_reachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fails fast (one TCP connect with a timeout) where requests would wait for the OS's connect timeout."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise SubmitError(f"--address: cannot reach the Ray job server at {url} ({reason}); is the cluster up "
                          "and the port forwarded (`ray dashboard CLUSTER.yaml`)?") from None


def connect(address: str | None) -> Any:
    """A JobSubmissionClient for the cluster, authenticated with the token when there is one.

    Args:
        address: --address, or None for RAY_ADDRESS.
    Returns:
        ray.job_submission.JobSubmissionClient (it has already checked the connection and the token).
    Raises:
        SubmitError: unreachable address, missing or refused token.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's INFO lines (package uploads) are not ours to print
    url = resolve_address(address)
    token, source = read_token()
    _check_reachable(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        if token is None:
            raise SubmitError(f"token: the cluster at {url} requires a token and none was found ({source}); "
                              "set RAY_AUTH_TOKEN_PATH to the cluster's token file") from None
        raise SubmitError(f"token: the cluster at {url} refused the token from {source} (wrong token)") from None
    except (ConnectionError, OSError) as exc:  # requests' ConnectionError is an OSError
        raise SubmitError(f"--address: cannot reach the Ray job server at {url} ({_first_line(exc)})") from None
    except RuntimeError as exc:  # a server that is not a Ray job server (404 on /api/version) or too old
        raise SubmitError(f"--address: {url} is not a usable Ray job server ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _job_request(fn: Callable[[], Any], job: str, url: str) -> Any:
    """Calls a client method about one job; a job the server does not know is a SubmitError."""
    try:
        return fn()
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise SubmitError(f"job: {job!r} does not exist on {url} (`ray job list` shows the jobs)") from None
        raise SubmitError(f"job {job!r}: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------------------ the config


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    """Runs the block with `path` as the working directory (where the job will run)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def resolve_config(config: str, overrides: list[str], working_dir: Path) -> tuple[dict[str, Any], ExperimentSpec]:
    """Validates the config as the job will see it and returns what to ship.

    Args:
        config: the YAML file (relative to the current directory).
        overrides: --set key=value strings.
        working_dir: the folder the job runs in; relative paths in the config are checked against it.
    Returns:
        (the config mapping with overrides applied, to write as the job's YAML; the validated spec).
    Raises:
        SpecError: the config fails validation, or its results would not land on shared storage.
    """
    from orchestrator.spec import apply_overrides, load_spec, read_config  # imports torch: only `submit` needs it

    config_path = Path(config).resolve()
    with _in_dir(working_dir):
        spec = load_spec(config_path, overrides)
    raw = read_config(config_path)
    raw.setdefault("experiment", config_path.stem)
    raw = apply_overrides(raw, overrides)
    for key in ("output", "storage_path"):
        value = raw.get(key, "results" if key == "output" else None)
        if value is not None and not is_uri(str(value)) and not os.path.isabs(os.path.expanduser(str(value))):
            raise SpecError(f"{key}: {value!r} is a relative path; a cluster job runs in a temporary copy of the "
                            f"working dir, so give shared storage: an absolute NFS path or s3://bucket/prefix "
                            f"(e.g. --set {key}=s3://bucket/sentinel)")
    return raw, spec


# Never shipped, whatever the ignore files say: credentials a working dir may hold (docs/SECURITY.md)
SECRET_FILES = (".env", ".env.*", "*.env", ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", ".dockercfg",
                "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.p12", "*.pfx", "*.kdbx",
                "*.keystore", "*.jks", "auth_token", "credentials", "credentials.*", "*.tfstate", "*.tfstate.*",
                "secrets.*", "service-account*.json")
SECRET_DIRS = (".ssh", ".aws", ".ray", ".gnupg", ".docker", ".kube", ".azure", "gcloud", ".password-store",
               ".git", ".cache", ".config")  # at any depth: a nested repo's config holds tokens; caches and user
#                                               config hold hub tokens (huggingface/token) and CLI logins (gh/hosts.yml)
SECRET_FILES += (".pgpass", ".s3cfg", "kubeconfig", "*.kubeconfig", ".bash_history", ".zsh_history", "*_history",
                 ".htpasswd", "token", "hosts.yml")
# what a file *is*, read from its first bytes: a private key or a token of a well-known service, whatever its name
SECRET_CONTENT = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|(?:ghp|gho|ghu|ghs)_[A-Za-z0-9]{36}|"
                            rb"github_pat_[A-Za-z0-9_]{40,}|hf_[A-Za-z0-9]{30,}|xox[baprs]-[A-Za-z0-9-]{10,}")
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
    name = rel.rsplit("/", 1)[-1]
    if is_dir:
        return name in SECRET_DIRS
    return any(fnmatch.fnmatch(name, p) for p in SECRET_FILES)


def plan_shipment(source: Path) -> Shipment:
    """The files `submit` would ship from `source`, walking it without following links.

    Left out: results/, .venv, .git at the top; caches anywhere; what the root's .gitignore / .rayignore
    match; credentials by name (SECRET_FILES, SECRET_DIRS), always; anything not a regular file. A link is
    shipped as the file it points to only when that file is inside `source`; a link that leads outside is
    refused (SubmitError), because Ray's packaging would follow it and ship what it points to.
    """
    source = source.resolve()
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
    parts = rel.split("/")
    return _secret(rel, False) or any(part in SECRET_DIRS for part in parts[:-1])


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


def project_root() -> Path:
    """The folder holding pyproject.toml next to this package (a source checkout), else the current directory."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def entrypoint(args: argparse.Namespace) -> str:
    """The job's shell command: `sentinel-bench run sentinel-job.yaml --address auto` plus run's flags."""
    flags = [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                   ("--no-analyze", args.no_analyze)) if on]
    return " ".join(["sentinel-bench", "run", JOB_CONFIG, "--address", "auto", *flags])


# ------------------------------------------------------------------------------------------ commands


def cmd_submit(args: argparse.Namespace) -> int:
    """Validates the config locally, ships the working dir and the config, prints the job id."""
    working_dir = Path(args.working_dir).resolve() if args.working_dir else project_root()
    if not working_dir.is_dir():
        raise SubmitError(f"--working-dir: {args.working_dir!r} is not a folder")
    raw, spec = resolve_config(args.config, args.overrides, working_dir)
    plan = plan_shipment(working_dir)
    if args.dry_run:
        print("\n".join([*plan.files, JOB_CONFIG]))
        for item in plan.withheld:
            print(f"not shipped: {item}", file=sys.stderr)
        print(f"{len(plan.files) + 1} files, {plan.size / 1e6:.1f} MB from {working_dir} (dry run: nothing sent)",
              file=sys.stderr)
        return 0
    client = connect(args.address)
    job_id = f"sentinel-{spec.experiment}-{uuid.uuid4().hex[:8]}"
    runtime_env: dict[str, Any] = {}
    if args.pip:
        runtime_env["pip"] = list(args.pip)
    with tempfile.TemporaryDirectory(prefix="sentinel-submit-") as tmp:
        runtime_env["working_dir"] = str(stage_working_dir(working_dir, raw, Path(tmp) / "job", plan))
        secrets = [w for w in plan.withheld if "(secret" in w]
        large = [w for w in plan.withheld if "(too large" in w]
        print(f"shipping {len(plan.files) + 1} files ({plan.size / 1e6:.1f} MB) from {working_dir}"
              + (f"; withheld as credentials: {', '.join(secrets)}" if secrets else "")
              + (f"; withheld as too large: {', '.join(large)}" if large else "")
              + " (--dry-run lists them)", file=sys.stderr)
        try:
            client.submit_job(entrypoint=entrypoint(args), submission_id=job_id, runtime_env=runtime_env,
                              metadata={"experiment": spec.experiment, "config": Path(args.config).name})
        except (RuntimeError, ValueError) as exc:  # refused by the server (package too large, bad pip spec)
            raise SubmitError(f"submit: the cluster refused the job ({_first_line(exc)})") from None
    print(job_id)
    print(f"results: {spec.output_dir}; follow with `sentinel-bench logs {job_id} --follow`", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Prints one line: the job id, its status and Ray's message."""
    client = connect(args.address)
    info = _job_request(lambda: client.get_job_info(args.job), args.job, client.get_address())
    message = f" ({info.message})" if info.message else ""
    print(f"{args.job}: {info.status}{message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the job's logs so far, or follows them until the job ends (--follow)."""
    client = connect(args.address)
    url = client.get_address()
    _job_request(lambda: client.get_job_info(args.job), args.job, url)  # an unknown id is exit 2, not a hang
    if not args.follow:
        sys.stdout.write(_job_request(lambda: client.get_job_logs(args.job), args.job, url))
        sys.stdout.flush()
        return 0

    async def follow() -> None:
        async for chunk in client.tail_job_logs(args.job):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    _job_request(lambda: asyncio.run(follow()), args.job, url)
    return 0


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="the cluster's job server, http://HEAD:8265 (default: $RAY_ADDRESS)")


def add_cli(subparsers) -> None:
    """The hook orchestrator.cli calls: registers `submit`, `status` and `logs`."""
    submit = subparsers.add_parser("submit", help="run an experiment as a Ray job on a cluster")
    submit.add_argument("config", help="experiment YAML; validated here before anything is sent")
    _add_address(submit)
    submit.add_argument("--working-dir", default=None, metavar="DIR",
                        help="folder shipped as the job's working dir (default: the project root)")
    submit.add_argument("--pip", action="append", default=[], metavar="PKG",
                        help="extra pip package for the job's runtime env (repeatable)")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value with a dotted key (repeatable)")
    submit.add_argument("--resume", action="store_true", help="continue the experiment from shared storage")
    submit.add_argument("--overwrite", action="store_true", help="replace a previous experiment of the same name")
    submit.add_argument("--no-analyze", action="store_true", help="write Parquet only, no tables or plots")
    submit.add_argument("--dry-run", action="store_true",
                        help="validate, list the files that would be shipped (and those withheld), send nothing")
    submit.set_defaults(func=cmd_submit)

    status = subparsers.add_parser("status", help="status of a submitted job")
    status.add_argument("job", help="the job id printed by submit")
    _add_address(status)
    status.set_defaults(func=cmd_status)

    logs = subparsers.add_parser("logs", help="logs of a submitted job")
    logs.add_argument("job", help="the job id printed by submit")
    _add_address(logs)
    logs.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    logs.set_defaults(func=cmd_logs)
