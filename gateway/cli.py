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
    if args.command == "whoami":
        return _whoami(args.config, args.token)
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


def _whoami(config_path: str, token: str) -> int:
    import asyncio
    from pathlib import Path

    from gateway.auth.tokens import TokenError, describe, whoami
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(config_path)
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
