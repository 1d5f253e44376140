"""Tests for the schema-driven Kafka codec (gateway/protocol/codec.py, schema.py).

(a) every request/response spec, every valid version: random bodies round-trip
    to identical bytes and identical dicts;
(b) every strict prefix of those encodings, and a trailing byte, is refused;
(c) kafka-python's own protocol classes (its hand-written ``kafka.protocol.old``
    structs and its JSON-driven ``ApiMessage`` classes) agree byte for byte;
(d) hostile lengths and varints fail fast, without allocating;
(e) random mutations of Metadata, Produce and Fetch responses only ever decode
    or raise DecodeError.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
import uuid

import pytest
from kafka.protocol.consumer import FetchResponse as KpFetchResponse
from kafka.protocol.metadata import MetadataRequest as KpMetadataRequest
from kafka.protocol.metadata import MetadataResponse as KpMetadataResponse
from kafka.protocol.old import (
    api_versions,
    fetch,
    find_coordinator,
    metadata,
    produce,
    sasl_authenticate,
    sasl_handshake,
)
from kafka.protocol.producer import ProduceResponse as KpProduceResponse

from gateway.protocol import codec, schema
from gateway.protocol.codec import DecodeError, EncodeError

SEED = 20240951

SPECS = [
    (kind, spec)
    for kind, table in (("request", schema.REQUESTS), ("response", schema.RESPONSES))
    for _, spec in sorted(table.items())
]


def versions(spec: schema.MessageSpec) -> range:
    return range(spec.valid_versions[0], spec.valid_versions[1] + 1)


def encode(kind: str, api_key: int, version: int, body: dict) -> bytes:
    encoder = codec.encode_request if kind == "request" else codec.encode_response
    return encoder(api_key, version, body)


def decode(kind: str, api_key: int, version: int, buf, **kwargs) -> dict:
    decoder = codec.decode_request if kind == "request" else codec.decode_response
    return decoder(api_key, version, buf, **kwargs)


# --------------------------------------------------------------------------
# Random bodies, built from the spec model independently of the codec


_INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_TEXT = "abcxyz-_.09éß漢字🙂"


def default_value(field: schema.FieldSpec, version: int):
    """What an absent tagged field must decode to."""
    if field.default is None:
        return None
    if field.is_array:
        return []
    if field.is_struct:
        return {f.snake_name: default_value(f, version) for f in field.fields if f.present(version)}
    return field.default


class RandomBodies:
    """Random values for every field of one version, and what decoding must return.

    Tagged fields are randomly present or absent (absent ones must come back
    at their default) and flexible structs sometimes carry unknown tags.  With
    ``long_values`` some strings, bytes and primitive arrays get lengths
    around 127, where a compact length grows to a two-byte varint.
    """

    def __init__(self, rng: random.Random, version: int, flexible: bool, long_values: bool):
        self.rng = rng
        self.version = version
        self.flexible = flexible
        self.long_values = long_values

    def length(self, short: int) -> int:
        if self.long_values and self.rng.random() < 0.1:
            return self.rng.choice([125, 126, 127, 128, 300])
        return self.rng.randint(0, short)

    def struct(self, fields) -> tuple[dict, dict]:
        rng, version = self.rng, self.version
        body: dict = {}
        expected: dict = {}
        known_tags = {f.tag for f in fields if f.present(version) and f.tagged(version)}
        for field in fields:
            if not field.present(version):
                continue
            name = field.snake_name
            if self.flexible and field.tagged(version) and rng.random() < 0.5:
                expected[name] = default_value(field, version)
                continue
            body[name], expected[name] = self.value(field)
        if self.flexible and rng.random() < 0.3:
            candidates = [t for t in (*range(8), 127, 128, 300, 70000) if t not in known_tags]
            unknown = {rng.choice(candidates): rng.randbytes(rng.randint(0, 6)) for _ in range(3)}
            body["_unknown_tags"] = unknown
            expected["_unknown_tags"] = dict(unknown)
        return body, expected

    def value(self, field: schema.FieldSpec):
        rng = self.rng
        if field.nullable(self.version) and rng.random() < 0.15:
            return None, None
        if field.is_array:
            count = rng.randint(0, 3) if field.is_struct else self.length(3)
            pairs = [self.element(field) for _ in range(count)]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        return self.element(field)

    def element(self, field: schema.FieldSpec):
        if field.is_struct:
            return self.struct(field.fields)
        value = self.scalar(field.element_type)
        return value, value

    def scalar(self, ftype: str):
        rng = self.rng
        if ftype in _INT_BITS:
            bits = _INT_BITS[ftype]
            low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            return rng.choice([low, high, -1, 0, rng.randint(low, high)])
        if ftype == "uint16":
            return rng.choice([0, 0xFFFF, rng.randint(0, 0xFFFF)])
        if ftype == "bool":
            return rng.random() < 0.5
        if ftype == "float64":
            return rng.choice([0.0, -2.5, 1e300, rng.uniform(-1e9, 1e9)])
        if ftype == "string":
            return "".join(rng.choice(_TEXT) for _ in range(self.length(8)))
        if ftype == "uuid":
            return rng.randbytes(16)
        if ftype in ("bytes", "records"):
            return rng.randbytes(self.length(12))
        raise AssertionError(f"unexpected type {ftype}")


def random_body(
    kind: str, spec: schema.MessageSpec, version: int, seed, long_values=True
) -> tuple[dict, dict]:
    rng = random.Random(f"{SEED}/{kind}/{spec.name}/{version}/{seed}")
    return RandomBodies(rng, version, spec.flexible(version), long_values).struct(spec.fields)


# --------------------------------------------------------------------------
# (a) round trip of every spec and version


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_round_trip_every_version(kind, spec):
    for version in versions(spec):
        for seed in range(8):
            body, expected = random_body(kind, spec, version, seed)
            wire = encode(kind, spec.api_key, version, body)
            decoded = decode(kind, spec.api_key, version, wire)
            where = f"{spec.name} v{version} seed {seed}"
            assert decoded == expected, where
            assert encode(kind, spec.api_key, version, decoded) == wire, where
            assert decode(kind, spec.api_key, version, wire) == decoded, where


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_empty_body_is_all_defaults(kind, spec):
    for version in versions(spec):
        wire = encode(kind, spec.api_key, version, {})
        decoded = decode(kind, spec.api_key, version, wire)
        assert decoded == {f.snake_name: default_value(f, version) for f in spec.fields if f.present(version)}
        assert encode(kind, spec.api_key, version, decoded) == wire


# --------------------------------------------------------------------------
# (b) truncation and trailing bytes


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_every_truncation_and_trailing_byte_is_refused(kind, spec):
    for version in versions(spec):
        # Small values keep "every prefix" affordable; long ones are covered below.
        body, _ = random_body(kind, spec, version, "truncate", long_values=False)
        wire = encode(kind, spec.api_key, version, body)
        for cut in range(len(wire)):
            with pytest.raises(DecodeError):
                decode(kind, spec.api_key, version, wire[:cut])
        with pytest.raises(DecodeError, match="trailing"):
            decode(kind, spec.api_key, version, wire + b"\x00")
        # Not strict: the body ends where it ends, whatever follows.
        relaxed = decode(kind, spec.api_key, version, wire + b"\x00", strict=False)
        assert relaxed == decode(kind, spec.api_key, version, wire)


def test_truncating_two_byte_compact_lengths():
    body = {
        "client_software_name": "n" * 200,
        "client_software_version": "v" * 127,
        "_unknown_tags": {300: b"x" * 130},
    }
    wire = codec.encode_request(18, 3, body)
    assert wire[:2] == b"\xc9\x01"  # 201 as a varint
    assert codec.decode_request(18, 3, wire) == body
    for cut in range(len(wire)):
        with pytest.raises(DecodeError):
            codec.decode_request(18, 3, wire[:cut])


def test_decode_at_offset_inside_a_larger_buffer():
    body = {"key": "group-1", "key_type": 0}
    wire = codec.encode_request(10, 2, body)
    buf = bytearray(b"junk" + wire)
    assert codec.decode_request(10, 2, buf, offset=4) == body
    with pytest.raises(DecodeError):
        codec.decode_request(10, 2, buf, offset=len(buf) + 1)
    with pytest.raises(DecodeError):
        codec.decode_request(10, 2, buf, offset=-1)


# --------------------------------------------------------------------------
# (c) independence: kafka-python encodes, we decode, and the other way round


def _records(n: int) -> bytes:
    return bytes(range(n))


# (kafka-python object, api_key, version, our body) for requests built by kafka-python.
KP_REQUESTS = [
    (
        metadata.MetadataRequest_v0(topics=["orders", "payments"]),
        3,
        0,
        {"topics": [{"name": "orders"}, {"name": "payments"}]},
    ),
    (metadata.MetadataRequest_v1(topics=None), 3, 1, {"topics": None}),
    (
        metadata.MetadataRequest_v4(topics=["t"], allow_auto_topic_creation=False),
        3,
        4,
        {"topics": [{"name": "t"}], "allow_auto_topic_creation": False},
    ),
    (
        metadata.MetadataRequest_v8(
            topics=["a"],
            allow_auto_topic_creation=True,
            include_cluster_authorized_operations=True,
            include_topic_authorized_operations=False,
        ),
        3,
        8,
        {
            "topics": [{"name": "a"}],
            "allow_auto_topic_creation": True,
            "include_cluster_authorized_operations": True,
            "include_topic_authorized_operations": False,
        },
    ),
    (
        produce.ProduceRequest_v3(
            transactional_id=None,
            acks=-1,
            timeout_ms=30000,
            topic_data=[("orders", [(0, _records(70)), (3, None)])],
        ),
        0,
        3,
        {
            "transactional_id": None,
            "acks": -1,
            "timeout_ms": 30000,
            "topic_data": [
                {
                    "name": "orders",
                    "partition_data": [{"index": 0, "records": _records(70)}, {"index": 3, "records": None}],
                }
            ],
        },
    ),
    (
        produce.ProduceRequest_v8(
            transactional_id="txn-1", acks=1, timeout_ms=5, topic_data=[("a", [(1, b"x")])]
        ),
        0,
        8,
        {
            "transactional_id": "txn-1",
            "acks": 1,
            "timeout_ms": 5,
            "topic_data": [{"name": "a", "partition_data": [{"index": 1, "records": b"x"}]}],
        },
    ),
    (find_coordinator.FindCoordinatorRequest_v0(key="g"), 10, 0, {"key": "g"}),
    (find_coordinator.FindCoordinatorRequest_v2(key="txn", key_type=1), 10, 2, {"key": "txn", "key_type": 1}),
    (api_versions.ApiVersionsRequest_v0(), 18, 0, {}),
    (
        api_versions.ApiVersionsRequest_v3(
            client_software_name="kafka-python", client_software_version="3.0.12"
        ),
        18,
        3,
        {"client_software_name": "kafka-python", "client_software_version": "3.0.12"},
    ),
    (
        sasl_handshake.SaslHandshakeRequest_v1(mechanism="SCRAM-SHA-512"),
        17,
        1,
        {"mechanism": "SCRAM-SHA-512"},
    ),
    (
        sasl_authenticate.SaslAuthenticateRequest_v1(auth_bytes=b"\x00user\x00pw"),
        36,
        1,
        {"auth_bytes": b"\x00user\x00pw"},
    ),
    (
        fetch.FetchRequest_v11(
            replica_id=-1,
            max_wait_ms=500,
            min_bytes=1,
            max_bytes=1 << 20,
            isolation_level=1,
            session_id=0,
            session_epoch=-1,
            topics=[("orders", [(0, 5, 100, -1, 65536)])],
            forgotten_topics_data=[("old", [7, 8])],
            rack_id="rack-a",
        ),
        1,
        11,
        {
            "replica_id": -1,
            "max_wait_ms": 500,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "isolation_level": 1,
            "session_id": 0,
            "session_epoch": -1,
            "topics": [
                {
                    "topic": "orders",
                    "partitions": [
                        {
                            "partition": 0,
                            "current_leader_epoch": 5,
                            "fetch_offset": 100,
                            "log_start_offset": -1,
                            "partition_max_bytes": 65536,
                        }
                    ],
                }
            ],
            "forgotten_topics_data": [{"topic": "old", "partitions": [7, 8]}],
            "rack_id": "rack-a",
        },
    ),
]


@pytest.mark.parametrize(("kp", "api_key", "version", "body"), KP_REQUESTS, ids=lambda x: type(x).__name__)
def test_kafka_python_requests_decode_and_match_bytes(kp, api_key, version, body):
    theirs = kp.encode()
    ours = codec.decode_request(api_key, version, theirs)
    assert {k: ours[k] for k in body} == body
    assert codec.encode_request(api_key, version, body) == theirs


def test_kafka_python_request_frame_header():
    kp = metadata.MetadataRequest_v1(topics=["t"])
    kp.with_header(correlation_id=42, client_id="kp-client")
    frame = kp.encode(header=True, framed=True)
    (api_key, version, correlation_id, client_id), body = codec.decode_request_frame(frame)
    assert (api_key, version, correlation_id, client_id) == (3, 1, 42, "kp-client")
    assert body == {"topics": [{"name": "t"}]}
    assert codec.encode_request_frame(3, 1, 42, "kp-client", body) == frame


def test_kafka_python_flexible_request_v12_with_uuid():
    topic_id = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    kp = KpMetadataRequest(
        topics=[KpMetadataRequest.MetadataRequestTopic(topic_id=topic_id, name="t")],
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=True,
    )
    theirs = bytes(kp.encode(version=12))
    ours = codec.decode_request(3, 12, theirs)
    assert ours["topics"] == [{"topic_id": topic_id.bytes, "name": "t"}]
    assert ours["allow_auto_topic_creation"] is False
    assert ours["include_topic_authorized_operations"] is True
    assert codec.encode_request(3, 12, ours) == theirs


# (kafka-python response class, api_key, version, our body, what kafka-python's to_object() shows)
KP_RESPONSES = [
    (
        api_versions.ApiVersionsResponse_v0,
        18,
        0,
        {"error_code": 0, "api_keys": [{"api_key": 0, "min_version": 3, "max_version": 13}]},
        {"error_code": 0, "api_keys": [{"api_key": 0, "min_version": 3, "max_version": 13}]},
    ),
    (
        metadata.MetadataResponse_v5,
        3,
        5,
        {
            "throttle_time_ms": 0,
            "brokers": [{"node_id": 1, "host": "b1", "port": 9092, "rack": None}],
            "cluster_id": "c-1",
            "controller_id": 1,
            "topics": [
                {
                    "error_code": 0,
                    "name": "t",
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": 0,
                            "leader_id": 1,
                            "replica_nodes": [1, 2],
                            "isr_nodes": [1],
                            "offline_replicas": [2],
                        }
                    ],
                }
            ],
        },
        {
            "throttle_time_ms": 0,
            "brokers": [{"node_id": 1, "host": "b1", "port": 9092, "rack": None}],
            "cluster_id": "c-1",
            "controller_id": 1,
            "topics": [
                {
                    "error_code": 0,
                    "name": "t",
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": 0,
                            "leader_id": 1,
                            "replica_nodes": [1, 2],
                            "isr_nodes": [1],
                            "offline_replicas": [2],
                        }
                    ],
                }
            ],
        },
    ),
    (
        produce.ProduceResponse_v8,
        0,
        8,
        {
            "responses": [
                {
                    "name": "orders",
                    "partition_responses": [
                        {
                            "index": 2,
                            "error_code": 0,
                            "base_offset": 1234,
                            "log_append_time_ms": -1,
                            "log_start_offset": 0,
                            "record_errors": [{"batch_index": 1, "batch_index_error_message": "bad"}],
                            "error_message": None,
                        }
                    ],
                }
            ],
            "throttle_time_ms": 3,
        },
        {
            "responses": [
                {
                    "name": "orders",
                    "partition_responses": [
                        {
                            "index": 2,
                            "error_code": 0,
                            "base_offset": 1234,
                            "log_append_time_ms": -1,
                            "log_start_offset": 0,
                            "record_errors": [{"batch_index": 1, "batch_index_error_message": "bad"}],
                            "error_message": None,
                        }
                    ],
                }
            ],
            "throttle_time_ms": 3,
        },
    ),
    (
        find_coordinator.FindCoordinatorResponse_v1,
        10,
        1,
        {
            "throttle_time_ms": 0,
            "error_code": 0,
            "error_message": None,
            "node_id": 2,
            "host": "b2",
            "port": 9093,
        },
        {
            "throttle_time_ms": 0,
            "error_code": 0,
            "error_message": None,
            "node_id": 2,
            "host": "b2",
            "port": 9093,
        },
    ),
    (
        sasl_handshake.SaslHandshakeResponse_v1,
        17,
        1,
        {"error_code": 0, "mechanisms": ["PLAIN", "SCRAM-SHA-256"]},
        {"error_code": 0, "mechanisms": ["PLAIN", "SCRAM-SHA-256"]},
    ),
    (
        sasl_authenticate.SaslAuthenticateResponse_v1,
        36,
        1,
        {"error_code": 0, "error_message": None, "auth_bytes": b"ok", "session_lifetime_ms": 60000},
        {"error_code": 0, "error_message": None, "auth_bytes": b"ok", "session_lifetime_ms": 60000},
    ),
]


@pytest.mark.parametrize(
    ("kp_cls", "api_key", "version", "body", "seen"), KP_RESPONSES, ids=lambda x: getattr(x, "__name__", "")
)
def test_our_responses_decode_with_kafka_python(kp_cls, api_key, version, body, seen):
    ours = codec.encode_response(api_key, version, body)
    assert kp_cls.decode(ours).to_object() == seen
    # And back: kafka-python re-encodes what it decoded to the very same bytes.
    assert kp_cls.decode(ours).encode() == ours


def test_flexible_apiversions_response_v3_with_kafka_python():
    body = {
        "error_code": 0,
        "api_keys": [{"api_key": 18, "min_version": 0, "max_version": 4}],
        "throttle_time_ms": 7,
    }
    ours = codec.encode_response(18, 3, body)
    kp = api_versions.ApiVersionsResponse_v3.decode(ours)
    # kafka-python keeps array elements as tuples without their (empty) tag sections.
    assert (kp.error_code, kp.api_keys, kp.throttle_time_ms, kp.tags) == (0, [(18, 0, 4)], 7, {})
    assert kp.encode() == ours


def test_fetch_response_v11_with_kafka_python():
    records = _records(200)
    body = {
        "throttle_time_ms": 1,
        "error_code": 0,
        "session_id": 99,
        "responses": [
            {
                "topic": "orders",
                "partitions": [
                    {
                        "partition_index": 0,
                        "error_code": 0,
                        "high_watermark": 10,
                        "last_stable_offset": 9,
                        "log_start_offset": 0,
                        "aborted_transactions": [{"producer_id": 5, "first_offset": 3}],
                        "preferred_read_replica": -1,
                        "records": records,
                    }
                ],
            }
        ],
    }
    ours = codec.encode_response(1, 11, body)
    kp = fetch.FetchResponse_v11.decode(ours)
    partition = kp.to_object()["responses"][0]["partitions"][0]
    assert partition["records"] == records
    assert partition["aborted_transactions"] == [{"producer_id": 5, "first_offset": 3}]
    assert kp.encode() == ours


def test_flexible_responses_with_kafka_python_api_messages():
    """kafka-python's JSON-driven classes: Metadata v12, Produce v11 and Fetch v16 (KIP-951 tags)."""
    topic_id = uuid.UUID(int=0x1234)

    kp_metadata = KpMetadataResponse(
        throttle_time_ms=0,
        brokers=[KpMetadataResponse.MetadataResponseBroker(node_id=1, host="b1", port=9092, rack="r1")],
        cluster_id="c",
        controller_id=1,
        topics=[
            KpMetadataResponse.MetadataResponseTopic(error_code=0, name="t", topic_id=topic_id, partitions=[])
        ],
    )
    metadata_body = {
        "brokers": [{"node_id": 1, "host": "b1", "port": 9092, "rack": "r1"}],
        "cluster_id": "c",
        "controller_id": 1,
        "topics": [{"error_code": 0, "name": "t", "topic_id": topic_id.bytes, "partitions": []}],
    }

    Partition = KpProduceResponse.TopicProduceResponse.PartitionProduceResponse
    kp_produce = KpProduceResponse(
        responses=[
            KpProduceResponse.TopicProduceResponse(
                name="t",
                partition_responses=[
                    Partition(
                        index=0,
                        error_code=6,
                        base_offset=-1,
                        current_leader=Partition.LeaderIdAndEpoch(leader_id=2, leader_epoch=9),
                    )
                ],
            )
        ],
        node_endpoints=[KpProduceResponse.NodeEndpoint(node_id=2, host="b2", port=9093, rack=None)],
    )
    produce_body = {
        "responses": [
            {
                "name": "t",
                "partition_responses": [
                    {
                        "index": 0,
                        "error_code": 6,
                        "base_offset": -1,
                        "current_leader": {"leader_id": 2, "leader_epoch": 9},
                    }
                ],
            }
        ],
        "node_endpoints": [{"node_id": 2, "host": "b2", "port": 9093, "rack": None}],
    }

    PartitionData = KpFetchResponse.FetchableTopicResponse.PartitionData
    kp_fetch = KpFetchResponse(
        responses=[
            KpFetchResponse.FetchableTopicResponse(
                topic_id=topic_id,
                partitions=[
                    PartitionData(
                        partition_index=1,
                        error_code=74,
                        current_leader=PartitionData.LeaderIdAndEpoch(leader_id=3, leader_epoch=4),
                        records=None,
                    )
                ],
            )
        ],
        node_endpoints=[KpFetchResponse.NodeEndpoint(node_id=3, host="b3", port=9094, rack="r3")],
    )
    fetch_body = {
        "responses": [
            {
                "topic_id": topic_id.bytes,
                "partitions": [
                    {
                        "partition_index": 1,
                        "error_code": 74,
                        "current_leader": {"leader_id": 3, "leader_epoch": 4},
                        "records": None,
                    }
                ],
            }
        ],
        "node_endpoints": [{"node_id": 3, "host": "b3", "port": 9094, "rack": "r3"}],
    }

    for kp, api_key, version, body in (
        (kp_metadata, 3, 12, metadata_body),
        (kp_produce, 0, 11, produce_body),
        (kp_fetch, 1, 16, fetch_body),
    ):
        theirs = bytes(kp.encode(version=version))
        assert codec.encode_response(api_key, version, body) == theirs, kp.name
        decoded = codec.decode_response(api_key, version, theirs)
        assert codec.encode_response(api_key, version, decoded) == theirs

    # And kafka-python reads what we write.
    kp = KpMetadataResponse.decode(codec.encode_response(3, 12, metadata_body), version=12)
    assert kp.topics[0].topic_id == topic_id and kp.brokers[0].rack == "r1"
    kp = KpProduceResponse.decode(codec.encode_response(0, 11, produce_body), version=11)
    leader = kp.responses[0].partition_responses[0].current_leader
    assert (leader.leader_id, leader.leader_epoch) == (2, 9)
    assert [(e.node_id, e.host, e.port, e.rack) for e in kp.node_endpoints] == [(2, "b2", 9093, None)]
    kp = KpFetchResponse.decode(codec.encode_response(1, 16, fetch_body), version=16)
    assert [(e.node_id, e.host, e.rack) for e in kp.node_endpoints] == [(3, "b3", "r3")]
    assert kp.responses[0].partitions[0].current_leader.leader_id == 3


# --------------------------------------------------------------------------
# (d) hostile input


def _fails_fast_without_allocating(decoder, buf, match):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=match):
            decoder(buf)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 64 * 1024


def test_huge_array_count_in_six_bytes():
    # ApiVersionsResponse v0: error_code int16, then an int32 count of 2**31 - 1 entries.
    buf = struct.pack(">hi", 0, 0x7FFFFFFF)
    assert len(buf) == 6
    _fails_fast_without_allocating(
        lambda b: codec.decode_response(18, 0, b), buf, r"api_keys: 2147483647 elements"
    )


def test_huge_int_array_count():
    # SaslHandshakeResponse v1: error_code, then a string array claiming 2**31 - 1 strings.
    buf = struct.pack(">hi", 0, 0x7FFFFFFF)
    _fails_fast_without_allocating(lambda b: codec.decode_response(17, 1, b), buf, "mechanisms")


def test_string_longer_than_buffer():
    # FindCoordinatorRequest v0: key string claiming 1000 bytes, 3 present.
    buf = struct.pack(">h", 1000) + b"abc"
    _fails_fast_without_allocating(
        lambda b: codec.decode_request(10, 0, b), buf, r"\.key: length 1000 exceeds"
    )


def test_bytes_longer_than_buffer():
    buf = struct.pack(">i", 0x7FFFFFFF) + b"abc"
    _fails_fast_without_allocating(lambda b: codec.decode_request(36, 1, b), buf, "auth_bytes: length")


def test_six_byte_varint():
    # ApiVersionsRequest v3: the compact string length is a 6-byte varint.
    buf = b"\x80\x80\x80\x80\x80\x01" + b"x"
    _fails_fast_without_allocating(lambda b: codec.decode_request(18, 3, b), buf, "longer than 5 bytes")


def test_compact_array_length_overflow():
    # MetadataRequest v12: a 5-byte compact array length above 2**32 - 1.
    buf = b"\xff\xff\xff\xff\x7f" + bytes(8)
    _fails_fast_without_allocating(
        lambda b: codec.decode_request(3, 12, b), buf, "topics: varint out of range"
    )


def test_compact_array_length_just_under_overflow():
    # 2**32 - 1 is a valid varint but an absurd element count.
    buf = b"\xff\xff\xff\xff\x0f" + bytes(8)
    _fails_fast_without_allocating(lambda b: codec.decode_request(3, 12, b), buf, "elements cannot fit")


def test_minus_one_on_a_non_nullable_string():
    # FindCoordinatorRequest v1: key is not nullable.
    buf = struct.pack(">hb", -1, 0)
    _fails_fast_without_allocating(
        lambda b: codec.decode_request(10, 1, b), buf, r"\.key: null in a non-nullable"
    )


def test_compact_null_on_a_non_nullable_array():
    # ApiVersionsResponse v3: api_keys compact length 0 means null, which it may not be.
    buf = struct.pack(">h", 0) + b"\x00" + bytes(5)
    with pytest.raises(DecodeError, match="api_keys: null in a non-nullable"):
        codec.decode_response(18, 3, buf)


def test_null_where_nullable_decodes_to_none():
    # MetadataRequest v1 topics is nullable: -1 means "all topics".
    assert codec.decode_request(3, 1, struct.pack(">i", -1)) == {"topics": None}
    # ...but in v0 it is not.
    with pytest.raises(DecodeError, match="null in a non-nullable"):
        codec.decode_request(3, 0, struct.pack(">i", -1))


def test_invalid_utf8_is_refused():
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        codec.decode_request(10, 0, struct.pack(">h", 2) + b"\xc3\x28")


def test_tagged_field_lying_about_its_size():
    # ApiVersionsResponse v3 with ZkMigrationReady (tag 3, a bool) given size 2.
    body = codec.encode_response(18, 3, {})
    assert body.endswith(b"\x00")
    with pytest.raises(DecodeError, match="zk_migration_ready: tagged field has 1 unread bytes"):
        codec.decode_response(18, 3, body[:-1] + b"\x01\x03\x02\x01\x00")
    # A tagged field cannot read past its own size either.
    with pytest.raises(DecodeError, match="finalized_features_epoch: truncated"):
        codec.decode_response(18, 3, body[:-1] + b"\x02\x01\x01\x00\x03\x01\x01")


def test_duplicate_and_oversized_tag_counts():
    body = codec.encode_response(18, 3, {})[:-1]
    with pytest.raises(DecodeError, match="duplicate tag 9"):
        codec.decode_response(18, 3, body + b"\x02\x09\x00\x09\x00")
    with pytest.raises(DecodeError, match="tagged fields cannot fit"):
        codec.decode_response(18, 3, body + b"\xff\xff\xff\xff\x0f")


def test_oversized_string_length_is_refused_even_if_present():
    # Only a compact length can exceed int16; Kafka refuses strings over 32767 bytes.
    client_name = b"\x81\x80\x02" + b"k" * 0x8000  # varint 0x8001: 32768 bytes
    with pytest.raises(DecodeError, match="over 32767"):
        codec.decode_request(18, 3, client_name + b"\x01\x00")
    with pytest.raises(EncodeError, match="over 32767"):
        codec.encode_request(10, 0, {"key": "k" * 0x8000})


def test_unsupported_versions():
    assert not codec.supports(0, 2, "request")  # removed in Kafka 4
    assert codec.supports(0, 3, "request")
    assert not codec.supports(7, 0, "request")  # ControlledShutdown is gone
    assert codec.supports(18, 4, "response")
    with pytest.raises(DecodeError, match="unsupported"):
        codec.decode_request(0, 2, b"")
    with pytest.raises(DecodeError, match="unsupported"):
        codec.decode_response(999, 0, b"")
    with pytest.raises(EncodeError, match="unsupported"):
        codec.encode_response(18, 5, {})
    with pytest.raises(ValueError):
        codec.supports(18, 0, "header")


# --------------------------------------------------------------------------
# (e) mutation fuzzing of Metadata, Produce and Fetch responses


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(6)
        pos = rng.randrange(len(buf)) if buf else 0
        if choice == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[pos] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif choice == 2:
            buf.insert(pos, rng.randrange(256))
        elif choice == 3 and buf:
            del buf[pos]
        elif choice == 4:
            del buf[pos:]
        else:
            end = min(len(buf), pos + rng.randint(1, 8))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


def test_fuzz_metadata_produce_fetch_responses():
    rng = random.Random(SEED)
    corpus = []
    for api_key in (3, 0, 1):
        spec = schema.RESPONSES[api_key]
        for version in versions(spec):
            for seed in range(3):
                body, _ = random_body("response", spec, version, f"fuzz{seed}")
                corpus.append((api_key, version, codec.encode_response(api_key, version, body)))
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(20_000):
        api_key, version, wire = rng.choice(corpus)
        mutated = _mutate(rng, wire)
        try:
            decoded = codec.decode_response(api_key, version, mutated)
        except DecodeError:
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        # Whatever decodes re-encodes to something that decodes the same.
        assert (
            codec.decode_response(api_key, version, codec.encode_response(api_key, version, decoded))
            == decoded
        )
    assert outcomes["decoded"] > 500 and outcomes["refused"] > 500, outcomes


def test_fuzz_request_and_response_frames():
    """Mutated frames, headers included: the only failure is DecodeError."""
    rng = random.Random(f"{SEED}/frames")
    requests = []
    responses = []
    for api_key, version in ((18, 3), (3, 12), (3, 1), (0, 9), (17, 1), (10, 4)):
        body, _ = random_body("request", schema.REQUESTS[api_key], version, "frame")
        requests.append(codec.encode_request_frame(api_key, version, 5, "client", body))
        body, _ = random_body("response", schema.RESPONSES[api_key], version, "frame")
        responses.append((api_key, version, codec.encode_response_frame(api_key, version, 5, body)))
    for _ in range(3000):
        try:
            codec.decode_request_frame(_mutate(rng, rng.choice(requests)))
        except DecodeError:
            pass
        api_key, version, frame = rng.choice(responses)
        try:
            codec.decode_response_frame(api_key, version, _mutate(rng, frame))
        except DecodeError:
            pass


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_light_fuzz_every_spec(kind, spec):
    """A few mutations of every spec version: the only failure is DecodeError."""
    rng = random.Random(f"{SEED}/light/{kind}/{spec.name}")
    for version in versions(spec):
        body, _ = random_body(kind, spec, version, "light")
        wire = encode(kind, spec.api_key, version, body)
        for _ in range(15):
            try:
                decode(kind, spec.api_key, version, _mutate(rng, wire))
            except DecodeError:
                pass


# --------------------------------------------------------------------------
# Frames and headers


def test_request_frames_round_trip_with_every_header_version():
    # v1 header (non-flexible body), v2 header (flexible body, tagged header fields).
    for api_key, version, body in ((10, 1, {"key": "g", "key_type": 0}), (3, 12, {"topics": None})):
        frame = codec.encode_request_frame(api_key, version, 7, "client-1", body)
        header, decoded = codec.decode_request_frame(frame)
        assert header == (api_key, version, 7, "client-1")
        assert decoded == codec.decode_request(api_key, version, codec.encode_request(api_key, version, body))
        assert codec.parse_request_header(frame)[:4] == header
    # The client id is always a classic (int16) string, even in header v2.
    frame = codec.encode_request_frame(18, 3, 1, "cli", {})
    assert frame[12:17] == b"\x00\x03cli"
    # A null client id.
    frame = codec.encode_request_frame(18, 3, 1, None, {})
    assert codec.decode_request_frame(frame)[0] == (18, 3, 1, None)


def test_request_header_v2_tagged_fields_are_skipped():
    frame = bytearray(codec.encode_request_frame(18, 3, 5, "c", {}))
    body_start = codec.parse_request_header(frame)[4]
    assert frame[body_start - 1] == 0
    # Replace the empty header tag section with one unknown tag of 3 bytes.
    frame[body_start - 1 : body_start] = b"\x01\x05\x03abc"
    struct.pack_into(">i", frame, 0, len(frame) - 4)
    header, body = codec.decode_request_frame(bytes(frame))
    assert header == (18, 3, 5, "c")
    assert body == codec.decode_request(18, 3, codec.encode_request(18, 3, {}))


def test_request_header_for_unsupported_version_still_parses():
    # A client asking for ApiVersions v9 must get an answer, so its header must parse.
    frame = struct.pack(">ihhih", 0, 18, 9, 77, 1) + b"c" + b"\x00"
    api_key, version, correlation_id, client_id, offset = codec.parse_request_header(frame)
    assert (api_key, version, correlation_id, client_id, offset) == (18, 9, 77, "c", len(frame))
    with pytest.raises(DecodeError, match="unknown api key"):
        codec.parse_request_header(struct.pack(">ihhih", 0, 999, 0, 1, -1))
    with pytest.raises(DecodeError):
        codec.parse_request_header(b"\x00\x00\x00\x01\x00")


def test_controlled_shutdown_v0_request_header_has_no_client_id():
    frame = struct.pack(">ihhi", 8, 7, 0, 99)
    assert codec.parse_request_header(frame) == (7, 0, 99, None, 12)


def test_response_frames_and_apiversions_header_v0():
    body = {"error_code": 0, "api_keys": [{"api_key": 3, "min_version": 0, "max_version": 13}]}
    frame = codec.encode_response_frame(18, 3, 11, body)
    # ApiVersions responses always use header v0: no tagged section after the correlation id.
    assert frame[4:8] == struct.pack(">i", 11) and frame[8:10] == b"\x00\x00"
    correlation_id, decoded = codec.decode_response_frame(18, 3, frame)
    assert correlation_id == 11 and decoded["api_keys"] == body["api_keys"]
    # Metadata v12 is flexible: header v1 has an (empty) tag section.
    frame = codec.encode_response_frame(3, 12, 12, {})
    assert frame[8] == 0
    assert codec.decode_response_frame(3, 12, frame)[0] == 12


def test_frame_size_must_match():
    frame = codec.encode_response_frame(3, 12, 1, {})
    with pytest.raises(DecodeError, match="size"):
        codec.decode_response_frame(3, 12, frame + b"\x00")
    with pytest.raises(DecodeError, match="size"):
        codec.decode_request_frame(frame[:3])


def test_header_versions():
    assert schema.request_header_version(18, 3) == 2
    assert schema.request_header_version(18, 2) == 1
    assert schema.request_header_version(18, 9) == 2  # newer than we know, still flexible
    assert schema.request_header_version(7, 0) == 0  # ControlledShutdown v0
    assert schema.response_header_version(18, 4) == 0  # ApiVersions: always v0
    assert schema.response_header_version(3, 9) == 1
    assert schema.response_header_version(3, 8) == 0
    with pytest.raises(ValueError):
        schema.request_header_version(999, 0)


# --------------------------------------------------------------------------
# Error responses, records, unknown tags


def test_top_level_error_response():
    body = codec.top_level_error_response(18, 3, 35)
    assert body["error_code"] == 35 and body["api_keys"] == [] and body["finalized_features_epoch"] == -1
    assert codec.decode_response(18, 3, codec.encode_response(18, 3, body)) == body
    assert codec.top_level_error_response(3, 12, 1) is None  # Metadata v12 has none...
    assert codec.top_level_error_response(3, 13, 1)["error_code"] == 1  # ...v13 does
    assert codec.top_level_error_response(0, 11, 1) is None  # Produce: per-partition only
    body = codec.top_level_error_response(36, 1, 58, {"error_message": "bad credentials"})
    assert body == {
        "error_code": 58,
        "error_message": "bad credentials",
        "auth_bytes": b"",
        "session_lifetime_ms": 0,
    }
    # Fresh containers every time: callers may mutate them.
    first = codec.top_level_error_response(18, 3, 35)
    first["api_keys"].append({})
    assert codec.top_level_error_response(18, 3, 35)["api_keys"] == []


def test_records_are_zero_copy_views():
    records = bytes(range(256)) * 4
    wire = codec.encode_response(
        1, 16, {"responses": [{"partitions": [{"records": records}, {"records": None}]}]}
    )
    view = memoryview(wire)
    decoded = codec.decode_response(1, 16, view)
    got = decoded["responses"][0]["partitions"][0]["records"]
    assert isinstance(got, memoryview) and got.obj is wire and got == records
    assert decoded["responses"][0]["partitions"][1]["records"] is None


def test_unknown_tags_survive_and_known_tags_are_refused_there():
    body = {"_unknown_tags": {50: b"future", 4: b""}}
    wire = codec.encode_response(18, 3, body)
    decoded = codec.decode_response(18, 3, wire)
    assert decoded["_unknown_tags"] == {4: b"", 50: b"future"}
    assert codec.encode_response(18, 3, decoded) == wire
    with pytest.raises(EncodeError, match="known field's tag"):
        codec.encode_response(18, 3, {"_unknown_tags": {3: b"\x01"}})


def test_tagged_field_at_default_is_not_written():
    plain = codec.encode_response(18, 3, {})
    assert codec.encode_response(18, 3, {"zk_migration_ready": False, "supported_features": []}) == plain
    assert len(codec.encode_response(18, 3, {"zk_migration_ready": True})) == len(plain) + 3


def test_encode_errors_name_the_field():
    with pytest.raises(
        EncodeError, match=r"MetadataResponsev12\.brokers\[\]\.node_id: required argument is not an integer"
    ):
        codec.encode_response(3, 12, {"brokers": [{"node_id": "one", "host": "h", "port": 1}]})
    with pytest.raises(EncodeError, match=r"\.host: None in a non-nullable field"):
        codec.encode_response(3, 12, {"brokers": [{"node_id": 1, "host": None, "port": 1}]})
    with pytest.raises(EncodeError, match="uuid is 16 bytes"):
        codec.encode_response(3, 12, {"topics": [{"topic_id": b"short"}]})
    with pytest.raises(EncodeError, match=r"ApiVersionsResponsev0\.error_code: .*32767"):
        codec.encode_response(18, 0, {"error_code": 1 << 20})


# --------------------------------------------------------------------------
# Schema model


def test_schema_model():
    assert schema.snake_case("NodeId") == "node_id"
    assert schema.snake_case("KRaftVersion") == "kraft_version"
    assert schema.snake_case("ThrottleTimeMs") == "throttle_time_ms"
    assert schema.strip_comments('{"a": "x//y"} // gone') == '{"a": "x//y"} '
    metadata_spec = schema.RESPONSES[3]
    assert (metadata_spec.name, metadata_spec.kind, metadata_spec.valid_versions) == (
        "MetadataResponse",
        "response",
        (0, 13),
    )
    assert metadata_spec.flexible_min == 9
    brokers = metadata_spec.fields[1]
    assert brokers.type == "[]MetadataResponseBroker" and brokers.is_array and brokers.is_struct
    assert [f.snake_name for f in brokers.fields] == ["node_id", "host", "port", "rack"]
    rack = brokers.fields[3]
    assert rack.default is None and rack.nullable(1) and not rack.present(0)
    node_endpoints = schema.RESPONSES[1].fields[-1]
    assert (node_endpoints.tag, node_endpoints.tagged_versions) == (0, (16, 0x7FFF))
    assert schema.REQUESTS[18].fields[0].entity_type is None
    assert 7 not in schema.REQUESTS  # ControlledShutdown: removed, no versions
    assert set(schema.HEADERS) == {"RequestHeader", "ResponseHeader"}
    # Struct types shared through commonStructs are resolved into the field.
    members = schema.RESPONSES[69].fields[-1].fields  # ConsumerGroupDescribe: Groups
    assignment = next(
        f for f in next(f for f in members if f.name == "Members").fields if f.name == "Assignment"
    )
    assert assignment.type == "Assignment" and [f.name for f in assignment.fields] == ["TopicPartitions"]
