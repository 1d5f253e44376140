"""End-to-end throughput: Kafka's own ProducerPerformance/ConsumerPerformance, direct vs through the gateway.

Runs alternate (direct, gateway 1 worker, gateway 2 workers, and again) in one
session on one single-node cluster, so the ratios compare like with like on a
noisy shared machine. Writes bench/results/e2e.json and prints a table.

    python bench/e2e.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.dev.idp import DevIdp  # noqa: E402
from gateway.dev.kafka import KafkaCluster, ensure_jars, java_tool  # noqa: E402
from gateway.dev.process import GatewayProcess  # noqa: E402

RECORD_SIZE = 1024
PRODUCER_LINE = re.compile(
    r"(\d+) records sent, [\d.]+ records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, "
    r"(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th")


def generated_policy(rules: int) -> str:
    """A policy of `rules` rules for as many principals, plus the rule that lets the benchmark's own
    principal (the dev IdP client "bench", or ANONYMOUS without sign-in) produce and consume."""
    lines = ["rules:",
             "  - name: bench-client",
             '    subjects: ["user:bench", "user:ANONYMOUS"]',
             '    resources: [{topic: {prefix: "bench-"}}, {group: {glob: "*"}}, {cluster: true}]',
             "    operations: [all]"]
    for index in range(rules - 1):
        lines += [f"  - name: team-{index}",
                  f'    subjects: ["user:svc-{index}", "group:team-{index % 50}"]',
                  f'    resources: [{{topic: {{prefix: "team-{index}."}}}}, {{group: {{glob: "team-{index}-*"}}}}]',
                  "    operations: [read, write, describe]"]
    return "\n".join(lines) + "\n"


def oauth_clients(work: Path) -> tuple[DevIdp, dict, Path, list[str]]:
    """Clients sign in to the gateway with OAUTHBEARER through the dev IdP, as in production: the started
    IdP, the gateway's config overrides, the Java clients' properties file and their JVM flags."""
    idp = DevIdp({"audience": "streamward", "clients": [{"id": "bench", "secret": "bench-secret"}]},
                 data_dir=work / "idp").start()
    overrides = {"auth": {"oidc": {"issuer": idp.issuer, "audience": "streamward"}}}
    client_config = work / "oauth.properties"
    client_config.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=OAUTHBEARER\n"
        "sasl.login.callback.handler.class="
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler\n"
        f"sasl.oauthbearer.token.endpoint.url={idp.token_endpoint}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
        'clientId="bench" clientSecret="bench-secret";\n')
    return idp, overrides, client_config, [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.token_endpoint}"]


def cpu_seconds(pid: int) -> float:
    """CPU time of the gateway supervisor and all its workers so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of every core of the machine so far: broker, clients and gateway together. On a
    machine they share, their sum per GB read is what bounds a ratio against direct Kafka."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    every = sum(times)
    return every - idle, every


def produce(lib: Path, bootstrap: str, topic: str, records: int, client_config: Path | None, jvm: list[str]) -> dict:
    args = ["--topic", topic, "--num-records", str(records), "--record-size", str(RECORD_SIZE),
            "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all"]
    if client_config is not None:
        args += ["--command-config", str(client_config)]
    result = java_tool(lib, "org.apache.kafka.tools.ProducerPerformance", args, timeout=600, heap="512m",
                       extra_jvm_args=jvm)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])
    match = PRODUCER_LINE.findall(result.stdout.decode())[-1]
    return {"mb_s": float(match[1]), "p50_ms": float(match[4]), "p99_ms": float(match[6])}


def consume(lib: Path, bootstrap: str, topic: str, records: int, client_config: Path | None, jvm: list[str]) -> dict:
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records), "--timeout", "60000"]
    if client_config is not None:
        args += ["--command-config", str(client_config)]
    result = java_tool(lib, "org.apache.kafka.tools.ConsumerPerformance", args, timeout=600, heap="512m",
                       extra_jvm_args=jvm)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])
    lines = [line for line in result.stdout.decode().splitlines() if line and line[0].isdigit()]
    fields = [field.strip() for field in lines[-1].split(",")]
    # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    # rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    return {"mb_s": float(fields[8]), "mb": float(fields[2])}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=800_000, help="records per run (1 KiB each)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-auth", action="store_true", help="clients connect to the gateway without signing in")
    parser.add_argument("--policy-rules", type=int, default=1000,
                        help="size of the generated policy the gateway decides every request against")
    args = parser.parse_args()

    lib = ensure_jars()
    work = Path(tempfile.mkdtemp(prefix="streamward-bench-"))
    cluster = KafkaCluster(work / "kafka", nodes=1, port_base=18092)
    cluster.start()
    direct_config = work / "direct.properties"
    cluster.write_client_config("admin", direct_config)
    runs: dict[str, list[dict]] = {"direct": [], "gateway1": [], "gateway2": []}
    cpu_per_gb: list[float] = []
    idp = None
    gateway_config: Path | None = None
    gateway_jvm: list[str] = []
    overrides: dict = {}
    if not args.no_auth:
        idp, overrides, gateway_config, gateway_jvm = oauth_clients(work)
    policy = generated_policy(args.policy_rules)
    try:
        gateways = {
            "gateway1": GatewayProcess(work / "gw1", cluster, workers=1, port_base=31192, admin_port=31200,
                                       overrides=overrides, policy=policy),
            "gateway2": GatewayProcess(work / "gw2", cluster, workers=2, port_base=31292, admin_port=31300,
                                       overrides=overrides, policy=policy),
        }
        for gateway in gateways.values():
            gateway.start()
        for round_index in range(args.rounds):
            for side in ("direct", "gateway1", "gateway2"):
                topic = f"bench-{side}-{round_index}"
                cluster.create_topic(topic, partitions=6, replication_factor=1)
                gateway = gateways.get(side)
                bootstrap = cluster.bootstrap if gateway is None else gateway.bootstrap
                config = direct_config if gateway is None else gateway_config
                jvm = [] if gateway is None else gateway_jvm
                cpu_before = cpu_seconds(gateway.proc.pid) if gateway else 0.0
                produced = produce(lib, bootstrap, topic, args.records, config, jvm)
                consumed = consume(lib, bootstrap, topic, args.records, config, jvm)
                if gateway is not None:
                    gigabytes = 2 * args.records * RECORD_SIZE / 1e9  # each record crosses the gateway twice
                    cpu_per_gb.append((cpu_seconds(gateway.proc.pid) - cpu_before) / gigabytes)
                runs[side].append({"produce": produced, "consume": consumed})
                print(f"round {round_index} {side:9s} produce {produced['mb_s']:7.1f} MB/s "
                      f"(p50 {produced['p50_ms']:.0f} ms, p99 {produced['p99_ms']:.0f} ms)  "
                      f"consume {consumed['mb_s']:7.1f} MB/s", flush=True)
        for gateway in gateways.values():
            gateway.stop()
    finally:
        if idp is not None:
            idp.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)  # several GB of topic data: a run must not leave it behind

    def median(side: str, kind: str, key: str = "mb_s") -> float:
        return statistics.median(run[kind][key] for run in runs[side])

    best = max(("gateway1", "gateway2"), key=lambda side: median(side, "produce") + median(side, "consume"))
    result = {
        "records_per_run": args.records, "record_size": RECORD_SIZE, "rounds": args.rounds,
        "client_auth": "none" if args.no_auth else "OAUTHBEARER (dev IdP)",
        "policy_rules": args.policy_rules,
        "direct_produce_mb_s": median("direct", "produce"),
        "gateway_produce_mb_s": median(best, "produce"),
        "produce_ratio": median(best, "produce") / median("direct", "produce"),
        "direct_consume_mb_s": median("direct", "consume"),
        "gateway_consume_mb_s": median(best, "consume"),
        "consume_ratio": median(best, "consume") / median("direct", "consume"),
        "gateway_workers": 1 if best == "gateway1" else 2,
        "gateway_cpu_s_per_gb": statistics.median(cpu_per_gb),
        "direct_produce_p50_ms": median("direct", "produce", "p50_ms"),
        "direct_produce_p99_ms": median("direct", "produce", "p99_ms"),
        "gateway_produce_p50_ms": median(best, "produce", "p50_ms"),
        "gateway_produce_p99_ms": median(best, "produce", "p99_ms"),
        "by_workers": {side: {"produce_mb_s": median(side, "produce"), "consume_mb_s": median(side, "consume")}
                       for side in runs},
        "runs": runs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = REPO / "bench" / "results" / "e2e.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{'':10s}{'direct':>10s}{'gateway':>10s}{'ratio':>8s}")
    for kind in ("produce", "consume"):
        print(f"{kind + ' MB/s':10s}{result[f'direct_{kind}_mb_s']:10.1f}{result[f'gateway_{kind}_mb_s']:10.1f}"
              f"{result[f'{kind}_ratio']:8.3f}")
    print(f"gateway CPU: {result['gateway_cpu_s_per_gb']:.2f} core-s per GB forwarded; "
          f"produce p50/p99 {result['gateway_produce_p50_ms']:.0f}/{result['gateway_produce_p99_ms']:.0f} ms "
          f"(direct {result['direct_produce_p50_ms']:.0f}/{result['direct_produce_p99_ms']:.0f} ms); written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
