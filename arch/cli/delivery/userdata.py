"""`archctl userdata --package SOURCE [OPTIONS]`: render the EC2 userdata bootstrap."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from arch.delivery.definitions import DefinitionError, parse_assignments
from arch.delivery.render import RenderError
from arch.delivery.resources import ResourceMissing
from arch.delivery.userdata import (
    PackageSource,
    UserdataError,
    UserdataOptions,
    as_mime_multipart,
    render_userdata,
)


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "userdata",
        help="render the EC2 userdata that installs ARCH on a stock ECS/Batch instance",
        description="Render templates/userdata.sh.j2: a first-boot script that installs the arch "
        "wheel, runs the role bundled in it on the instance, configures the ECS agent and ends "
        "with `archctl verify`.",
    )
    parser.add_argument(
        "--package",
        required=True,
        metavar="SOURCE",
        help="the arch wheel: https://... URL, s3://BUCKET/KEY (needs the aws CLI and an "
        "instance role that may read it) or an absolute path on the instance",
    )
    parser.add_argument("--package-sha256", default="", help="refuse a wheel with another sha256")
    parser.add_argument(
        "--efs", default="", metavar="FS_ID", help="mount this EFS file system as checkpoint root"
    )
    parser.add_argument(
        "--efs-region", default="", help="the EFS region (default: the instance's region)"
    )
    parser.add_argument("--checkpoint-root", default="/checkpoint")
    parser.add_argument("--ecs-cluster", default="", help="ECS_CLUSTER (omit for AWS Batch)")
    parser.add_argument(
        "--platform",
        choices=("ecs", "batch", "none"),
        default="",
        help="what a Spot notice does to a checkpointed job (arch.toml platform; default: ecs "
        "with --ecs-cluster, else batch)",
    )
    parser.add_argument(
        "--spot-watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run `archctl spot-watch` (checkpoint everything on a Spot interruption notice)",
    )
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--fleet-key-file", default="", help="fleet signing key: a file on the instance"
    )
    key.add_argument("--fleet-key-ssm", default="", help="fleet signing key: an SSM SecureString")
    key.add_argument(
        "--fleet-key-secret", default="", help="fleet signing key: a Secrets Manager secret"
    )
    parser.add_argument(
        "--role-var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another variable of the role (arch_*), repeatable",
    )
    parser.add_argument(
        "--mime",
        action="store_true",
        help="wrap the script as MIME multi-part user data (AWS Batch launch templates need it)",
    )
    parser.add_argument("--output", "-o", help="write to this file (mode 0700) instead of stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        options = UserdataOptions(
            package=PackageSource.parse(args.package),
            package_sha256=args.package_sha256,
            efs_file_system_id=args.efs,
            efs_region=args.efs_region,
            checkpoint_root=args.checkpoint_root,
            ecs_cluster=args.ecs_cluster,
            platform=args.platform,
            spot_watch=args.spot_watch,
            fleet_key_file=args.fleet_key_file,
            fleet_key_ssm_parameter=args.fleet_key_ssm,
            fleet_key_secret=args.fleet_key_secret,
            role_variables=parse_assignments(args.role_var),
        )
        script = render_userdata(options)
        if args.mime:
            script = as_mime_multipart(script)
    except (UserdataError, DefinitionError) as error:
        print(f"archctl userdata: {error}", file=sys.stderr)
        return 2
    except (RenderError, ResourceMissing) as error:
        print(f"archctl userdata: {error}", file=sys.stderr)
        return 1
    if not args.output:
        sys.stdout.write(script)
        return 0
    try:
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(descriptor, "w", encoding="utf-8") as output:
            output.write(script)
    except OSError as error:
        print(f"archctl userdata: cannot write {args.output}: {error}", file=sys.stderr)
        return 1
    return 0
