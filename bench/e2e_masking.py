"""End-to-end consume throughput with inline masking on, against direct Kafka in the same run.

One single-node cluster; records of ~1 KiB JSON, each with a card number and an email that the policy
masks for the benchmark's identity, produced once per codec (none, lz4) straight to the broker. Then
Kafka's ConsumerPerformance reads each topic directly (admin, no masking), through the gateway with
masking off (the same policy without its masking line: what proxying alone costs) and through the
gateway with masking on (OAUTHBEARER), for several rounds, every other one in reverse order (the machine's
speed drifts within a run). Writes bench/results/e2e_masking.json.

    python bench/e2e_masking.py [--records N] [--rounds R] [--workers W] [--client java|librdkafka]
                                [--read-ahead on|off] [--mask-threads N] [--pin-gateway]

--client librdkafka reads with confluent-kafka instead of ConsumerPerformance: librdkafka keeps fetching in the
background while the application consumes, so it shows what the gateway itself sustains rather than the Java
consumer's fetch-then-drain cycle. Its results go to bench/results/e2e_masking_librdkafka.json.

Besides the rates, each side reports the whole machine's busy core-seconds per GB and the share of its cores
left idle (the broker, the client and the gateway share this machine's cores), and the results say how many
Fetches the gateway answered from read-ahead and how many read-aheads it dropped. --read-ahead and
--mask-threads set the gateway's limits.read_ahead and limits.mask_threads, to measure what each gives.

--pin-gateway gives the gateway a core of its own: the broker, the IdP and every client run on the first CPU, the
gateway (supervisor and workers) on the second, for the direct reads as for the others. That is how a gateway is
deployed, on hosts apart from the brokers and the consumers, and it separates the two things a shared-core ratio
mixes: what the gateway takes from the broker and the client in CPU, and what its place in the data path costs a
consumer in throughput. The idle share then counts the gateway's core too, idle through the direct reads. Its
results go to bench/results/e2e_masking_pinned.json (e2e_masking_librdkafka_pinned.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.e2e import consume, cpu_seconds, machine_cpu_seconds, oauth_clients  # noqa: E402
from gateway.dev.kafka import KafkaCluster, ensure_jars, java_tool  # noqa: E402
from gateway.dev.process import GatewayProcess  # noqa: E402

POLICY = """\
rules:
  - name: bench-reads-masked
    subjects: ["user:bench"]
    resources: [{topic: {prefix: "bench-"}}]
    operations: [all]
    masking: [cards, emails]
  - name: bench-groups
    subjects: ["user:bench"]
    resources: [{group: {glob: "*"}}, {cluster: true}]
    operations: [all]
masking:
  cards: {detector: card, strategy: partial, keep_last: 4}
  emails: {path: customer.email, strategy: hash}
"""
UNMASKED_POLICY = POLICY.replace("    masking: [cards, emails]\n", "")


def payload_values(count: int = 2000) -> list[bytes]:
    """JSON values of about 1 KiB, each with one card number and one email among ordinary fields."""
    rng = random.Random(7)
    values = []
    for i in range(count):
        value = {"order": f"order-{i}", "amount": rng.randint(1, 10_000), "currency": "EUR",
                 "card": {"number": "4111 1111 1111 1111", "expiry": "12/29"},
                 "customer": {"id": f"c-{rng.randint(1, 10**6)}", "email": f"user{i}@example.com",
                              "segment": rng.choice(["retail", "business"])},
                 "items": [{"sku": f"sku-{rng.randint(1, 9999)}", "qty": rng.randint(1, 5),
                            "note": "x" * rng.randint(40, 80)} for _ in range(8)]}
        values.append(json.dumps(value, separators=(",", ":")).encode())
    return values


def payload_file(path: Path, count: int = 2000) -> int:
    """payload_values, one per line, for ProducerPerformance; their average size."""
    values = payload_values(count)
    path.write_bytes(b"\n".join(values))
    return sum(len(value) for value in values) // len(values)


def produce_payloads(lib: Path, cluster: KafkaCluster, config: Path, topic: str, records: int, payloads: Path,
                     codec: str) -> None:
    args = ["--topic", topic, "--num-records", str(records), "--payload-file", str(payloads),
            "--payload-delimiter", "\n", "--throughput", "-1", "--command-config", str(config),
            "--producer-props", f"bootstrap.servers={cluster.bootstrap}", "acks=1", f"compression.type={codec}",
            "linger.ms=20", "batch.size=262144"]
    result = java_tool(lib, "org.apache.kafka.tools.ProducerPerformance", args, timeout=600, heap="512m")
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])


def consume_librdkafka(bootstrap: str, topic: str, records: int, settings: dict) -> dict:
    """Read the topic from the start with confluent-kafka; MB/s of record values from the first record to the
    last, as ConsumerPerformance's fetch rate leaves out joining the group."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **settings})
    consumer.subscribe([topic])
    count, size, started = 0, 0, None
    deadline = time.monotonic() + 600
    try:
        while count < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {count} of {records} records in 600 s")
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is not None:
                    raise RuntimeError(str(message.error()))
                started = started or time.monotonic()
                count += 1
                size += len(message.value())
        took = time.monotonic() - started
    finally:
        consumer.close()
    return {"mb_s": size / took / 1e6, "mb": size / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser()
    # 2 million records of ~1 KiB: each read lasts several seconds. With 400,000 a direct read lasted about a
    # second, mostly the JVM warming up, and came out at about 60 % of its long-run rate, which flattered every
    # ratio (masked none 0.69 at 400,000 against 0.56-0.58 at 2 million, the same build).
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--client", choices=("java", "librdkafka"), default="java")
    parser.add_argument("--mask-threads", type=int, default=None, help="the gateway's limits.mask_threads")
    parser.add_argument("--read-ahead", choices=("on", "off"), default="on", help="the gateway's limits.read_ahead")
    parser.add_argument("--pin-gateway", action="store_true",
                        help="the gateway on the second CPU, everything else on the first")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin_gateway:
        if len(cpus) < 2:
            parser.error(f"--pin-gateway needs two CPUs; this process may use {cpus}")
        os.sched_setaffinity(0, {cpus[0]})     # the broker, the IdP and every client inherit it

    lib = ensure_jars()
    work = Path(tempfile.mkdtemp(prefix="streamward-bench-masking-"))
    cluster = KafkaCluster(work / "kafka", nodes=1, port_base=18092)
    cluster.start()
    direct_config = work / "direct.properties"
    cluster.write_client_config("admin", direct_config)
    idp, overrides, gateway_config, gateway_jvm = oauth_clients(work)
    overrides["limits"] = {"read_ahead": args.read_ahead == "on"}
    if args.mask_threads is not None:
        overrides["limits"]["mask_threads"] = args.mask_threads
    payloads = work / "payloads.txt"
    value_size = payload_file(payloads)
    results: dict[str, dict] = {}
    gateway = GatewayProcess(work / "gw", cluster, workers=args.workers, port_base=31192, admin_port=31200,
                             overrides=overrides, policy=POLICY)
    direct_settings = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
                       "sasl.username": "admin", "sasl.password": cluster.passwords["admin"]}
    gateway_settings = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "OAUTHBEARER",
                        "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": "bench",
                        "sasl.oauthbearer.client.secret": "bench-secret",
                        "sasl.oauthbearer.token.endpoint.url": idp.token_endpoint}

    def read(through_gateway: bool, topic: str) -> float:
        if args.client == "librdkafka":
            return consume_librdkafka(gateway.bootstrap if through_gateway else cluster.bootstrap, topic, args.records,
                                      gateway_settings if through_gateway else direct_settings)["mb_s"]
        if through_gateway:
            return consume(lib, gateway.bootstrap, topic, args.records, gateway_config, gateway_jvm)["mb_s"]
        return consume(lib, cluster.bootstrap, topic, args.records, direct_config, [])["mb_s"]
    read_ahead_before: dict[str, int] = {}
    try:
        if args.pin_gateway:
            # The supervisor and the workers it forks inherit the CPU they are started on.
            os.sched_setaffinity(0, {cpus[1]})
            gateway.start()
            os.sched_setaffinity(0, {cpus[0]})
        else:
            gateway.start()
        for codec in ("none", "lz4"):
            topic = f"bench-masked-{codec}"
            cluster.create_topic(topic, partitions=6, replication_factor=1)
            produce_payloads(lib, cluster, direct_config, topic, args.records, payloads, codec)
            direct, plain, through, cpu = [], [], [], []
            machine: dict[str, list[float]] = {"direct": [], "plain": [], "masked": []}  # busy core-s per GB
            idle: dict[str, list[float]] = {"direct": [], "plain": [], "masked": []}  # share of the cores left idle
            gigabytes = args.records * value_size / 1e9
            for round_index in range(args.rounds):
                # Every other round in reverse order: this machine's speed drifts within a run, and a fixed
                # order would hand the drift to whichever side always comes last.
                for side in ("direct", "plain", "masked")[::1 if round_index % 2 == 0 else -1]:
                    if side != "direct":
                        gateway.install_policy(UNMASKED_POLICY if side == "plain" else POLICY)
                    busy_before, all_before = machine_cpu_seconds()
                    gateway_before = cpu_seconds(gateway.proc.pid)
                    # The machine's CPU is counted over the whole client run (JVM start and group join too), so
                    # its per-GB figures are a little above the read's own; the same for every side.
                    rate = read(side != "direct", topic)
                    busy, every = machine_cpu_seconds()
                    machine[side].append((busy - busy_before) / gigabytes)
                    idle[side].append(1 - (busy - busy_before) / (every - all_before))
                    {"direct": direct, "plain": plain, "masked": through}[side].append(rate)
                    if side == "masked":
                        cpu.append((cpu_seconds(gateway.proc.pid) - gateway_before) / gigabytes)
                print(f"{codec:5s} round {round_index}: direct {direct[-1]:7.1f} MB/s, through the gateway "
                      f"{plain[-1]:7.1f} MB/s without masking, {through[-1]:7.1f} MB/s with", flush=True)
            time.sleep(1.5)  # workers publish their counters about once a second
            metrics = gateway.metrics().splitlines()
            masked = sum(int(line.rsplit(" ", 1)[1]) for line in metrics
                         if line.startswith("streamward_masked_fields_total{") and f'topic="{topic}"' in line)
            # The gateway counts over its life: this codec's are what it added since the last.
            so_far = {kind: sum(int(line.rsplit(" ", 1)[1]) for line in metrics
                                if line.startswith(f"streamward_read_ahead_{kind}_total{{"))
                      for kind in ("answered", "dropped")}
            read_ahead = {kind: count - read_ahead_before.get(kind, 0) for kind, count in so_far.items()}
            read_ahead_before = so_far
            results[codec] = {"direct_consume_mb_s": statistics.median(direct),
                              "gateway_consume_mb_s": statistics.median(through),
                              "consume_ratio": statistics.median(through) / statistics.median(direct),
                              "unmasked_consume_mb_s": statistics.median(plain),
                              "unmasked_ratio": statistics.median(plain) / statistics.median(direct),
                              "gateway_cpu_s_per_gb": statistics.median(cpu),
                              "machine_cpu_s_per_gb": {side: statistics.median(v) for side, v in machine.items()},
                              "machine_idle": {side: statistics.median(v) for side, v in idle.items()},
                              "fields_masked": masked, "read_ahead": read_ahead,
                              "direct_runs": direct, "gateway_runs": through,
                              "unmasked_runs": plain}
        gateway.stop()
    finally:
        idp.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)  # about 1 GB of topic data: a run must not leave it behind
    summary = {"records": args.records, "value_bytes": value_size, "rounds": args.rounds, "workers": args.workers,
               "client": args.client, "read_ahead": args.read_ahead, "mask_threads": args.mask_threads,
               "pin_gateway": args.pin_gateway,
               "codecs": results,
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    name = "e2e_masking" + ("" if args.client == "java" else "_librdkafka") + ("_pinned" if args.pin_gateway else "")
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"\n{'codec':6s}{'direct MB/s':>14s}{'unmasked MB/s':>15s}{'ratio':>8s}{'masked MB/s':>14s}{'ratio':>8s}"
          f"{'core-s/GB':>11s}")
    for codec, r in results.items():
        print(f"{codec:6s}{r['direct_consume_mb_s']:14.1f}{r['unmasked_consume_mb_s']:15.1f}{r['unmasked_ratio']:8.3f}"
              f"{r['gateway_consume_mb_s']:14.1f}{r['consume_ratio']:8.3f}{r['gateway_cpu_s_per_gb']:11.2f}")
    print(f"\n{'codec':6s}{'machine core-s/GB: direct':>27s}{'unmasked':>10s}{'masked':>8s}"
          f"{'idle: direct':>14s}{'unmasked':>10s}{'masked':>8s}")
    for codec, r in results.items():
        m, i = r["machine_cpu_s_per_gb"], r["machine_idle"]
        print(f"{codec:6s}{m['direct']:27.2f}{m['plain']:10.2f}{m['masked']:8.2f}"
              f"{i['direct']:14.0%}{i['plain']:10.0%}{i['masked']:8.0%}")
    for codec, r in results.items():
        print(f"{codec}: read-ahead answered {r['read_ahead']['answered']} Fetches, dropped "
              f"{r['read_ahead']['dropped']}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
