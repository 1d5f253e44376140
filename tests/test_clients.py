"""Real, unmodified Kafka clients sign in with OIDC and produce 10,000 records through the gateway, then consume them.

Each client uses only its standard OAuth settings against the dev IdP's token
endpoint (kcat, whose Debian build lacks OIDC, sends the token as a SASL/PLAIN
password). Each test proves: the same count, the same keys, values and headers,
and the same order within each partition as produced.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid

from tests.oauth import AioKafkaProvider, KafkaPythonProvider, fetch_token, java_client_properties, librdkafka_settings

N = 10_000


def expected(i: int) -> tuple[str, str, dict[str, str]]:
    return f"key-{i}", f"value-{i}", {"h": f"hv-{i}"}


def verify(records: list[tuple[int, int, str, str, dict[str, str]]], headers_fixed: dict[str, str] | None = None):
    """records: (partition, offset, key, value, headers) as the client received them, in receive order."""
    assert len(records) == N, f"received {len(records)} records, produced {N}"
    seen = set()
    last_index: dict[int, int] = {}
    last_offset: dict[int, int] = {}
    for partition, offset, key, value, headers in records:
        match = re.fullmatch(r"key-(\d+)", key)
        assert match, f"unexpected key {key!r}"
        i = int(match.group(1))
        want_key, want_value, want_headers = expected(i)
        assert value == want_value
        assert headers == (headers_fixed if headers_fixed is not None else want_headers)
        assert i not in seen, f"record {i} received twice"
        seen.add(i)
        assert i > last_index.get(partition, -1), f"partition {partition}: record {i} out of order"
        assert offset > last_offset.get(partition, -1), f"partition {partition}: offset {offset} out of order"
        last_index[partition], last_offset[partition] = i, offset
    assert len(last_index) > 1, "records should spread over several partitions"


def test_kafka_python(gateway, idp, make_topic):
    from kafka import KafkaConsumer, KafkaProducer

    topic = make_topic("kafka-python")
    auth = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token_provider": KafkaPythonProvider(idp.token_endpoint)}
    producer = KafkaProducer(bootstrap_servers=gateway.bootstrap, linger_ms=5, **auth)
    for i in range(N):
        key, value, headers = expected(i)
        producer.send(topic, key=key.encode(), value=value.encode(),
                      headers=[(k, v.encode()) for k, v in headers.items()])
    producer.flush(60)
    producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=gateway.bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", consumer_timeout_ms=30000, **auth)
    records = []
    for message in consumer:
        records.append((message.partition, message.offset, message.key.decode(), message.value.decode(),
                        {k: v.decode() for k, v in message.headers}))
        if len(records) == N:
            break
    consumer.commit()
    consumer.close()
    verify(records)


def test_aiokafka(gateway, idp, make_topic):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = make_topic("aiokafka")

    auth = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token_provider": AioKafkaProvider(idp.token_endpoint)}

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=gateway.bootstrap, linger_ms=5, **auth)
        await producer.start()
        try:
            batch = []
            for i in range(N):
                key, value, headers = expected(i)
                batch.append(await producer.send(topic, key=key.encode(), value=value.encode(),
                                                 headers=[(k, v.encode()) for k, v in headers.items()]))
            await asyncio.gather(*batch)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"g-{uuid.uuid4().hex[:6]}", **auth)
        await consumer.start()
        records = []
        try:
            async with asyncio.timeout(60):
                async for message in consumer:
                    records.append((message.partition, message.offset, message.key.decode(), message.value.decode(),
                                    {k: v.decode() for k, v in message.headers}))
                    if len(records) == N:
                        break
            await consumer.commit()
        finally:
            await consumer.stop()
        return records

    verify(asyncio.run(run()))


def test_confluent_kafka(gateway, idp, make_topic):
    from confluent_kafka import Consumer, Producer

    topic = make_topic("confluent")
    auth = librdkafka_settings(idp.token_endpoint)
    producer = Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 5, **auth})
    for i in range(N):
        key, value, headers = expected(i)
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=list(headers.items()))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0

    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", **auth})
    consumer.subscribe([topic])
    records = []
    try:
        for _ in range(600):
            for message in consumer.consume(1000, timeout=0.5):
                assert message.error() is None, message.error()
                records.append((message.partition(), message.offset(), message.key().decode(),
                                message.value().decode(), {k: v.decode() for k, v in message.headers() or []}))
            if len(records) >= N:
                break
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    verify(records)


def test_kcat(gateway, idp, make_topic):
    topic = make_topic("kcat")
    # Debian's librdkafka has no OIDC: the token goes as a SASL/PLAIN password (gateway option sasl_plain).
    auth = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=etl-job",
            "-X", f"sasl.password={fetch_token(idp.token_endpoint)}"]
    lines = "".join(f"{expected(i)[0]}\t{expected(i)[1]}\n" for i in range(N))
    subprocess.run(["kcat", "-P", "-b", gateway.bootstrap, "-t", topic, "-K", "\t", "-H", "h=kcat", "-z", "none",
                    *auth],
                   input=lines.encode(), check=True, timeout=120)
    result = subprocess.run(["kcat", "-C", "-b", gateway.bootstrap, "-t", topic, "-o", "beginning", "-e", *auth,
                             "-f", "%p\t%o\t%k\t%s\t%h\n"], capture_output=True, check=True, timeout=120)
    records = []
    for line in result.stdout.decode().splitlines():
        partition, offset, key, value, headers = line.split("\t")
        records.append((int(partition), int(offset), key, value, dict(h.split("=", 1) for h in headers.split(","))))
    verify(records, headers_fixed={"h": "kcat"})


def test_java_console_clients(gateway, idp, make_topic, kafka_jars, tmp_path):
    from gateway.dev.kafka import java_tool

    topic = make_topic("java")
    client_config = tmp_path / "oauth.properties"
    client_config.write_text(java_client_properties(idp.token_endpoint))
    # Kafka 4.x clients fetch tokens only from URLs the JVM allows explicitly.
    jvm = [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.token_endpoint}"]
    lines = "".join(f"h:{expected(i)[2]['h']}\t{expected(i)[0]}\t{expected(i)[1]}\n" for i in range(N))
    produced = java_tool(kafka_jars, "org.apache.kafka.tools.ConsoleProducer",
                         ["--bootstrap-server", gateway.bootstrap, "--topic", topic,
                          "--reader-property", "parse.key=true", "--reader-property", "parse.headers=true",
                          # ConsoleProducer's own 1.5 s request timeout makes a loaded 2-core machine retry and
                          # lose records to sequence errors; Kafka's clients default to 30 s.
                          "--producer-property", "request.timeout.ms=30000",
                          "--command-config", str(client_config)],
                         input=lines.encode(), timeout=180, extra_jvm_args=jvm)
    assert produced.returncode == 0, produced.stderr.decode()[-2000:]
    consumed = java_tool(kafka_jars, "org.apache.kafka.tools.consumer.ConsoleConsumer",
                         ["--bootstrap-server", gateway.bootstrap, "--topic", topic, "--from-beginning",
                          "--max-messages", str(N), "--timeout-ms", "60000",
                          "--formatter-property", "print.partition=true", "--formatter-property", "print.offset=true",
                          "--formatter-property", "print.headers=true", "--formatter-property", "print.key=true",
                          "--command-config", str(client_config)],
                         timeout=180, extra_jvm_args=jvm)
    assert consumed.returncode == 0, consumed.stderr.decode()[-2000:]
    records = []
    for line in consumed.stdout.decode().splitlines():
        partition, offset, headers, key, value = line.split("\t")
        records.append((int(partition.removeprefix("Partition:")), int(offset.removeprefix("Offset:")), key, value,
                        dict(h.split(":", 1) for h in headers.split(","))))
    verify(records)


def test_franz_go(gateway, idp, make_topic, franz_binary):
    from tests.oauth import CLIENTS

    topic = make_topic("franz")
    result = subprocess.run([str(franz_binary), "-brokers", gateway.bootstrap, "-topic", topic, "-n", str(N),
                             "-token-url", idp.token_endpoint, "-client-id", "etl-job",
                             "-client-secret", CLIENTS["etl-job"]["secret"]], capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = [(r["partition"], r["offset"], r["key"], r["value"], r["headers"])
               for r in map(json.loads, result.stdout.decode().splitlines())]
    verify(records)


def test_consumer_protocol_member_gets_a_new_topic_at_once(gateway, idp, kafka_cluster, make_topic):
    """KIP-848 (group.protocol=consumer): the heartbeat response names the assignment by topic id, and the
    broker sends an assignment only when it changes. A topic created (and filled) straight on the brokers
    is one no gateway worker has looked up; the worker must look its id up before it filters the assignment,
    or the member would sit without partitions until the worker's periodic rediscovery (10 s) and the
    coordinator's next resend. All records arrive within 7 s of subscribing."""
    import time

    from confluent_kafka import Consumer, Producer

    topic = make_topic(f"kip848-{uuid.uuid4().hex[:6]}", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                         "sasl.password": kafka_cluster.passwords["admin"]})
    for i in range(100):
        producer.produce(topic, key=f"key-{i}", value=f"value-{i}")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "group.protocol": "consumer", "auto.offset.reset": "earliest",
                         **librdkafka_settings(idp.token_endpoint)})
    started = time.monotonic()
    consumer.subscribe([topic])
    values = set()
    try:
        while len(values) < 100 and time.monotonic() - started < 7:
            for message in consumer.consume(100, timeout=0.2):
                assert message.error() is None, message.error()
                values.add(message.value())
    finally:
        consumer.close()
    assert len(values) == 100, f"{len(values)} of 100 records within {time.monotonic() - started:.1f} s"
