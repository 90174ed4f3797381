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
import os
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.ray_jobs import SubmitError, connect, first_line, job_request
from orchestrator.shipment import JOB_CONFIG, plan_shipment, shown, stage_working_dir
from orchestrator.storage import is_uri
from sentinel.contract import SpecError

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec


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
    from orchestrator.spec import DEFAULTS, apply_overrides, load_spec, read_config  # imports torch: only `submit` needs it

    config_path = Path(config).resolve()
    with _in_dir(working_dir):
        spec = load_spec(config_path, overrides)
    raw = read_config(config_path)
    raw.setdefault("experiment", config_path.stem)
    raw = apply_overrides(raw, overrides)
    for key in ("output", "storage_path"):
        value = raw.get(key, DEFAULTS[key])
        if value is not None and not is_uri(str(value)) and not os.path.isabs(os.path.expanduser(str(value))):
            raise SpecError(f"{key}: {value!r} is a relative path; a cluster job runs in a temporary copy of the "
                            f"working dir, so give shared storage: an absolute NFS path or s3://bucket/prefix "
                            f"(e.g. --set {key}=s3://bucket/sentinel)")
    return raw, spec


def local_inputs(spec: ExperimentSpec, working_dir: Path) -> tuple[str, ...]:
    """The local files and folders the config names (models, text sources), relative to the working dir: what the
    job needs besides the project's code. A name that is no local path inside the working dir (a hub model, a
    built-in source) is not one."""
    root = working_dir.resolve()
    names = {n for c in spec.cells for n in (c.model, c.data.source, c.data.eval_source) if isinstance(n, str) and n}
    out = []
    for name in sorted(names):
        path = (root / os.path.expanduser(name)).resolve()
        if path.exists() and (path == root or root in path.parents):
            out.append(path.relative_to(root).as_posix())
    return tuple(out)


def project_root() -> Path:
    """The folder holding pyproject.toml next to this package (a source checkout), else the current directory."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def entrypoint(args: argparse.Namespace) -> str:
    """The job's shell command: `sentinel-bench run sentinel-job.yaml --address auto` plus run's flags."""
    flags = [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                   ("--no-analyze", args.no_analyze)) if on]
    return " ".join(["sentinel-bench", "run", JOB_CONFIG, "--address", "auto", *flags])


def cmd_submit(args: argparse.Namespace) -> int:
    """Validates the config locally, ships the working dir and the config, prints the job id."""
    working_dir = Path(args.working_dir).resolve() if args.working_dir else project_root()
    if not working_dir.is_dir():
        raise SubmitError(f"--working-dir: {args.working_dir!r} is not a folder")
    raw, spec = resolve_config(args.config, args.overrides, working_dir)
    plan = plan_shipment(working_dir, local_inputs(spec, working_dir), tuple(args.include))
    other = (f"; {plan.other} other files not asked for (the project's code, the config's local files and --include "
             "are shipped)") if plan.other else ""
    if args.dry_run:
        print("\n".join([shown(f) for f in plan.files] + [JOB_CONFIG]))
        for item in plan.withheld:
            print(f"not shipped: {shown(item)}", file=sys.stderr)
        print(f"{len(plan.files) + 1} files, {plan.size / 1e6:.1f} MB from {working_dir}{other} (dry run: nothing "
              "sent)", file=sys.stderr)
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
              + (f"; withheld as credentials: {', '.join(shown(s) for s in secrets)}" if secrets else "")
              + (f"; withheld as too large: {', '.join(shown(s) for s in large)}" if large else "") + other
              + " (--dry-run lists them)", file=sys.stderr)
        try:
            client.submit_job(entrypoint=entrypoint(args), submission_id=job_id, runtime_env=runtime_env,
                              metadata={"experiment": spec.experiment, "config": Path(args.config).name})
        except (RuntimeError, ValueError) as exc:  # refused by the server (package too large, bad pip spec)
            raise SubmitError(f"submit: the cluster refused the job ({first_line(exc)})") from None
    print(job_id)
    address = f" --address {shlex.quote(args.address)}" if args.address else ""  # runnable as printed
    print(f"results: {spec.output_dir}; follow with `sentinel-bench logs {job_id}{address} --follow`, state with "
          f"`sentinel-bench status {job_id}{address}`", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Prints one line: the job id, its status and Ray's message."""
    client = connect(args.address)
    info = job_request(lambda: client.get_job_info(args.job), args.job, client.get_address())
    message = f" ({info.message})" if info.message else ""
    print(f"{args.job}: {info.status}{message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the job's logs so far, or follows them until the job ends (--follow)."""
    client = connect(args.address)
    url = client.get_address()
    job_request(lambda: client.get_job_info(args.job), args.job, url)  # an unknown id is exit 2, not a hang
    if not args.follow:
        sys.stdout.write(job_request(lambda: client.get_job_logs(args.job), args.job, url))
        sys.stdout.flush()
        return 0

    async def follow() -> None:
        async for chunk in client.tail_job_logs(args.job):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    job_request(lambda: asyncio.run(follow()), args.job, url)
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
    submit.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="ship files matching this glob too (path or name; repeatable); credentials still withheld")
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
