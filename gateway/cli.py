"""The `streamward` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamward", description="Privileged-access gateway for Apache Kafka")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="gateway YAML config")
    serve.add_argument("--workers", type=int, help="worker processes (default: from config, else one per core)")

    check = commands.add_parser("check-config", help="validate a gateway config file")
    check.add_argument("config")

    whoami = commands.add_parser("whoami", help="validate a token the way the gateway would and say who it is")
    whoami.add_argument("--token", required=True, help="the bearer token (or @FILE to read it from a file)")
    whoami.add_argument("--config", default="examples/gateway.yaml", help="gateway config with auth.oidc")

    policy = commands.add_parser("policy", help="validate and explain access policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check_policy = policy_commands.add_parser("check", help="validate policy files (errors name file, line, key)")
    check_policy.add_argument("path", nargs="?", default="policies")
    explain = policy_commands.add_parser("explain", help="the decision for one request and the rule that made it")
    explain.add_argument("--policies", default="policies", help="policy file or directory")
    explain.add_argument("--principal", required=True)
    explain.add_argument("--groups", default="", help="comma-separated groups")
    target = explain.add_mutually_exclusive_group(required=True)
    target.add_argument("--topic")
    target.add_argument("--group")
    target.add_argument("--transactional-id")
    target.add_argument("--cluster", action="store_true")
    explain.add_argument("--op", required=True, help="read, write, create, delete, alter, describe, ...")
    explain.add_argument("--partition", type=int)

    _add_approvals_commands(commands)

    dev = commands.add_parser("dev", help="development helpers")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    dev_commands.add_parser("kafka", help="run a local Kafka cluster (see `streamward dev kafka -h`)", add_help=False)
    dev_commands.add_parser("idp", help="run the development OIDC IdP (see `streamward dev idp -h`)", add_help=False)
    run = dev_commands.add_parser("run", help="local Kafka + the gateway with an example config, until Ctrl-C")
    run.add_argument("--config", default="examples/gateway.yaml")

    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from gateway.supervisor import serve as serve_gateway

        return serve_gateway(args.config, args.workers)
    if args.command == "check-config":
        from gateway.config import ConfigError, load_config

        try:
            load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.config}: ok")
        return 0
    if args.command == "policy":
        from gateway.policy import check_main, explain_main

        if args.policy_command == "check":
            return check_main(args.path)
        groups = [g for g in args.groups.split(",") if g]
        return explain_main(args.policies, args.principal, groups, operation=args.op, topic=args.topic,
                            group=args.group, transactional_id=args.transactional_id, cluster=args.cluster,
                            partition=args.partition)
    if args.command == "whoami":
        return _whoami(args.config, args.token)
    if args.command in ("access", "approvals"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from gateway.approvals.client import run as run_approvals_command

        return run_approvals_command(args)
    if args.dev_command == "idp":
        from gateway.dev.idp import main as idp_main

        return idp_main(rest)
    if args.dev_command == "kafka":
        from gateway.dev.kafka import main as kafka_main

        return kafka_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from gateway.dev.quickstart import run_quickstart

    return run_quickstart(args.config)


def _add_approvals_commands(commands: argparse._SubParsersAction) -> None:
    """`access request` (ask for just-in-time access) and `approvals …` (decide and revoke), over the admin API."""
    # Only the option helper is imported here: the client's HTTP code loads when one of these commands runs.
    from gateway.approvals.client import add_common_options

    access = commands.add_parser("access", help="ask for just-in-time access through the gateway admin API")
    access_commands = access.add_subparsers(dest="access_command", required=True)
    request = access_commands.add_parser("request", help="ask for access to resources for a while")
    request.add_argument("--topic", action="append", help="a topic (repeat for several)")
    request.add_argument("--group", action="append", help="a consumer group (repeat for several)")
    request.add_argument("--transactional-id", action="append", help="a transactional id (repeat for several)")
    request.add_argument("--op", action="append", required=True, help="read, write, describe, ... (repeatable)")
    request.add_argument("--duration", help="how long: 90s, 30m, 2h, 1d, 1h30m (default: the rule's max_duration)")
    request.add_argument("--reason", required=True, help="why: approvers see it")
    add_common_options(request)

    approvals = commands.add_parser("approvals", help="list, approve, deny and revoke access requests and grants")
    approvals_commands = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approvals_commands.add_parser("list", help="access requests you made or may decide")
    listing.add_argument("--status", choices=["pending", "approved", "denied", "cancelled", "all"],
                         default="pending", help="default: pending")
    show = approvals_commands.add_parser("show", help="one access request")
    show.add_argument("id", help="the request id (req_...)")
    approve = approvals_commands.add_parser("approve", help="approve a pending access request")
    approve.add_argument("id", help="the request id (req_...)")
    approve.add_argument("--duration", help="grant for less time than asked: 90s, 30m, 2h, 1d, 1h30m")
    deny = approvals_commands.add_parser("deny", help="deny a pending access request")
    deny.add_argument("id", help="the request id (req_...)")
    deny.add_argument("--reason", required=True, help="why: the requester sees it")
    revoke = approvals_commands.add_parser("revoke", help="end a grant now")
    revoke.add_argument("grant_id", help="the grant id (grt_...)")
    revoke.add_argument("--reason")
    grants = approvals_commands.add_parser("grants", help="grants you hold or may decide (active ones by default)")
    grants.add_argument("--all", action="store_true", help="expired and revoked grants too")
    for parser in (listing, show, approve, deny, revoke, grants):
        add_common_options(parser)


def _whoami(config_path: str, token: str) -> int:
    import asyncio
    from pathlib import Path

    from gateway.auth.tokens import TokenError, describe, whoami
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(config_path, resolve_secrets=False)  # whoami never connects to Kafka
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.auth.oidc is None:
        print(f"{config_path}: auth.oidc is not configured", file=sys.stderr)
        return 2
    if token.startswith("@"):
        token = Path(token[1:]).read_text().strip()
    try:
        claims = asyncio.run(whoami(config.auth.oidc, token))
    except TokenError as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        return 1
    print(describe(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
