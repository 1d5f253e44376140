"""Many Kafka clients through the gateway at once: locust users that sign in with OIDC and produce/consume.

Not part of `make test`. Start a gateway (`make run`), then for example:

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 50 -r 5 -t 5m \
        --host 127.0.0.1:9092

Environment: STREAMWARD_TOKEN_URL (default http://127.0.0.1:9400/token), STREAMWARD_CLIENT_ID /
STREAMWARD_CLIENT_SECRET (default the dev IdP's etl-job), STREAMWARD_TOPIC (default sandbox.demo,
which the example policy lets etl-job use). Each user holds its own connections, as real clients do.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka.net.sasl.oauth import AbstractTokenProvider
from locust import User, between, events, task

TOKEN_URL = os.environ.get("STREAMWARD_TOKEN_URL", "http://127.0.0.1:9400/token")
CLIENT_ID = os.environ.get("STREAMWARD_CLIENT_ID", "etl-job")
CLIENT_SECRET = os.environ.get("STREAMWARD_CLIENT_SECRET", "dev-only-etl-job-secret")
TOPIC = os.environ.get("STREAMWARD_TOPIC", "sandbox.demo")


class ClientCredentials(AbstractTokenProvider):
    def token(self) -> str:
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        request = urllib.request.Request(TOKEN_URL, data=b"grant_type=client_credentials", method="POST",
                                         headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["access_token"]


def _timed(name: str, action) -> None:
    started = time.perf_counter()
    error = None
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - every failure is reported to locust, none is hidden
        error = exc
    events.request.fire(request_type="kafka", name=name, response_time=(time.perf_counter() - started) * 1000,
                        response_length=0, exception=error)


class KafkaClient(User):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        auth = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": ClientCredentials()}
        self.producer = KafkaProducer(bootstrap_servers=self.host, linger_ms=5, **auth)
        self.consumer = KafkaConsumer(TOPIC, bootstrap_servers=self.host, group_id=f"sandbox-{uuid.uuid4().hex[:8]}",
                                      auto_offset_reset="latest", **auth)

    def on_stop(self) -> None:
        self.producer.close()
        self.consumer.close()

    @task(3)
    def produce(self) -> None:
        _timed("produce", lambda: self.producer.send(TOPIC, os.urandom(512)).get(timeout=10))

    @task(1)
    def consume(self) -> None:
        _timed("poll", lambda: self.consumer.poll(timeout_ms=500, max_records=100))
