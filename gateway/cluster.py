"""The worker's view of the brokers behind it: node id -> real address, and node id -> gateway address.

Filled from the gateway's own discovery and from every Metadata, FindCoordinator,
DescribeCluster and NodeEndpoints response that passes through (before those are
rewritten). A node seen for the first time gets its listener through
``on_new_node``, so a broker that joins later is reachable through the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.config import ListenSettings

log = logging.getLogger("streamward.cluster")


class UnmappableNode(Exception):
    """A broker's node id falls outside the gateway's per-broker port range: fail closed."""


class ClusterView:
    def __init__(self, listen: ListenSettings, on_new_node: Callable[[int], None]) -> None:
        self.listen = listen
        self._on_new_node = on_new_node
        self._upstream: dict[int, tuple[str, int]] = {}
        # Topic ids (Fetch v13+, Produce v13+, Metadata by id) are resolved to names from the gateway's
        # own view before any decision: the policy speaks of names, and an id it cannot name is refused.
        self._topic_names: dict[bytes, str] = {}
        self._topic_ids: dict[str, bytes] = {}

    def learn_topic(self, name: str, topic_id: bytes) -> None:
        if not name or topic_id == bytes(16):
            return
        previous = self._topic_ids.get(name)
        if previous is not None and previous != topic_id:
            self._topic_names.pop(previous, None)  # the topic was deleted and created again
        self._topic_ids[name] = topic_id
        self._topic_names[topic_id] = name

    def name_of(self, topic_id: bytes) -> str | None:
        return self._topic_names.get(topic_id)

    def id_of(self, name: str) -> bytes | None:
        return self._topic_ids.get(name)

    def learn(self, node_id: int, host: str, port: int) -> None:
        if node_id < 0 or not host or port <= 0:
            return
        previous = self._upstream.get(node_id)
        if previous == (host, port):
            return
        if self.listen.node_port(node_id) is None:
            last = self.listen.first_node_id + self.listen.max_nodes - 1
            raise UnmappableNode(f"broker node id {node_id} is outside the gateway's mapped range "
                                 f"{self.listen.first_node_id}..{last}")
        self._upstream[node_id] = (host, port)
        if previous is None:
            log.info("broker node %d discovered", node_id)
            self._on_new_node(node_id)
        else:
            log.info("broker node %d moved", node_id)

    def upstream_address(self, node_id: int) -> tuple[str, int] | None:
        return self._upstream.get(node_id)

    def gateway_address(self, node_id: int) -> tuple[str, int]:
        port = self.listen.node_port(node_id)
        if port is None:
            raise UnmappableNode(f"broker node id {node_id} is outside the gateway's mapped range")
        return self.listen.advertised_host, port

    @property
    def node_ids(self) -> list[int]:
        return sorted(self._upstream)
