"""Rewrite every broker address a client can see to the gateway's own listeners.

Real broker hosts and ports never reach a client: Metadata, FindCoordinator
(v0-v3 single coordinator and v4+ batched coordinators), DescribeCluster, and the
KIP-951 NodeEndpoints that Produce (v10+), Fetch (v16+), ShareFetch and ShareAcknowledge
(every version, a regular field there) responses carry when a partition's leader moved.
Each function learns the real addresses first (so the gateway can reach a broker it has
not seen yet), then rewrites in place.
"""

from __future__ import annotations

from typing import Any

from gateway.cluster import ClusterView


def _rewrite_entry(entry: dict[str, Any], view: ClusterView, id_key: str = "node_id") -> None:
    node_id = entry[id_key]
    if node_id < 0:
        # An error placeholder (e.g. coordinator not available): make sure it carries no address at all.
        entry["host"], entry["port"] = "", -1
        return
    view.learn(node_id, entry["host"], entry["port"])
    entry["host"], entry["port"] = view.gateway_address(node_id)


def rewrite_metadata(body: dict[str, Any], version: int, view: ClusterView) -> bool:
    for broker in body["brokers"]:
        _rewrite_entry(broker, view)
    for topic in body["topics"]:
        if topic["error_code"] == 0 and "topic_id" in topic and topic["name"]:
            view.learn_topic(topic["name"], topic["topic_id"])
    return True


def rewrite_find_coordinator(body: dict[str, Any], version: int, view: ClusterView) -> bool:
    if version < 4:
        _rewrite_entry(body, view)
    else:
        for coordinator in body["coordinators"]:
            _rewrite_entry(coordinator, view)
    return True


def rewrite_describe_cluster(body: dict[str, Any], version: int, view: ClusterView) -> bool:
    for broker in body["brokers"]:
        _rewrite_entry(broker, view, "broker_id")
    return True


def rewrite_node_endpoints(body: dict[str, Any], version: int, view: ClusterView) -> bool:
    """Produce/Fetch/ShareFetch/ShareAcknowledge: only responses carrying leader hints change; the rest pass as
    the broker's bytes."""
    endpoints = body.get("node_endpoints")
    if not endpoints:
        return False
    for endpoint in endpoints:
        _rewrite_entry(endpoint, view)
    return True
