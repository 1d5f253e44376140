"""Which Kafka APIs the gateway forwards, and which it never lets through.

The gateway advertises (in ApiVersions) and forwards only the APIs listed in
``FORWARDED``, at the versions its message specs know AND the broker supports.
Everything else (unknown keys, the never-forwarded list, versions outside that
intersection) is answered by the gateway itself or closes the connection: an
API the gateway cannot inspect is an API it cannot enforce.
"""

from __future__ import annotations

from types import MappingProxyType

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
SASL_HANDSHAKE = 17
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
INIT_PRODUCER_ID = 22
OFFSET_FOR_LEADER_EPOCH = 23
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
TXN_OFFSET_COMMIT = 28
DESCRIBE_CONFIGS = 32
ALTER_CONFIGS = 33
DESCRIBE_LOG_DIRS = 35
SASL_AUTHENTICATE = 36
CREATE_PARTITIONS = 37
DELETE_GROUPS = 42
ELECT_LEADERS = 43
INCREMENTAL_ALTER_CONFIGS = 44
ALTER_PARTITION_REASSIGNMENTS = 45
LIST_PARTITION_REASSIGNMENTS = 46
OFFSET_DELETE = 47
DESCRIBE_CLUSTER = 60
DESCRIBE_PRODUCERS = 61
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66
CONSUMER_GROUP_HEARTBEAT = 68
CONSUMER_GROUP_DESCRIBE = 69
SHARE_GROUP_HEARTBEAT = 76
SHARE_GROUP_DESCRIBE = 77
SHARE_FETCH = 78
SHARE_ACKNOWLEDGE = 79
DESCRIBE_SHARE_GROUP_OFFSETS = 90
ALTER_SHARE_GROUP_OFFSETS = 91
DELETE_SHARE_GROUP_OFFSETS = 92

# Client APIs the gateway forwards once it has checked them. Each one is a
# request whose resources the policy layer can extract.
FORWARDED: frozenset[int] = frozenset({
    PRODUCE, FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR,
    JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS,
    CREATE_TOPICS, DELETE_TOPICS, DELETE_RECORDS, INIT_PRODUCER_ID, OFFSET_FOR_LEADER_EPOCH,
    ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT, DESCRIBE_CONFIGS,
    ALTER_CONFIGS, DESCRIBE_LOG_DIRS, CREATE_PARTITIONS, DELETE_GROUPS, ELECT_LEADERS,
    INCREMENTAL_ALTER_CONFIGS, ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS,
    OFFSET_DELETE, DESCRIBE_CLUSTER, DESCRIBE_PRODUCERS, DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS,
    CONSUMER_GROUP_HEARTBEAT, CONSUMER_GROUP_DESCRIBE,
    SHARE_GROUP_HEARTBEAT, SHARE_GROUP_DESCRIBE, SHARE_FETCH, SHARE_ACKNOWLEDGE,
    DESCRIBE_SHARE_GROUP_OFFSETS, ALTER_SHARE_GROUP_OFFSETS, DELETE_SHARE_GROUP_OFFSETS,
})

# Answered by the gateway itself, never forwarded: version negotiation and client sign-in
# (client SASL bytes never reach a broker; the gateway signs in upstream with its own credential).
ANSWERED_LOCALLY: frozenset[int] = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})

# Never forwarded, whatever the version, with the reason. Delegation tokens would
# mint credentials for the gateway's own principal; ACL, SCRAM and quota APIs
# would let a client rewrite the broker's security; the rest are broker- or
# controller-only and a client has no business sending them (CVE-2018-1288 class).
NEVER_FORWARDED = MappingProxyType({
    4: "LeaderAndIsr is broker-internal",
    5: "StopReplica is broker-internal",
    6: "UpdateMetadata is broker-internal",
    7: "ControlledShutdown is broker-internal",
    27: "WriteTxnMarkers is broker-internal",
    29: "DescribeAcls would expose the broker's ACLs",
    30: "CreateAcls would rewrite the broker's ACLs",
    31: "DeleteAcls would rewrite the broker's ACLs",
    38: "CreateDelegationToken would mint a token for the gateway's own principal",
    39: "RenewDelegationToken: delegation tokens are not forwarded",
    40: "ExpireDelegationToken: delegation tokens are not forwarded",
    41: "DescribeDelegationToken: delegation tokens are not forwarded",
    48: "DescribeClientQuotas is an operator API",
    49: "AlterClientQuotas is an operator API",
    50: "DescribeUserScramCredentials would list the broker's users",
    51: "AlterUserScramCredentials would change the broker's credentials",
    52: "Vote is controller-internal",
    53: "BeginQuorumEpoch is controller-internal",
    54: "EndQuorumEpoch is controller-internal",
    55: "DescribeQuorum is controller-internal",
    56: "AlterPartition is broker-internal",
    57: "UpdateFeatures is an operator API",
    58: "Envelope carries requests on behalf of other principals",
    59: "FetchSnapshot is controller-internal",
    62: "BrokerRegistration is broker-internal",
    63: "BrokerHeartbeat is broker-internal",
    64: "UnregisterBroker is an operator API",
    67: "AllocateProducerIds is broker-internal",
    70: "ControllerRegistration is controller-internal",
    73: "AssignReplicasToDirs is broker-internal",
    80: "AddRaftVoter is controller-internal",
    81: "RemoveRaftVoter is controller-internal",
    82: "UpdateRaftVoter is controller-internal",
    83: "InitializeShareGroupState is broker-internal (share coordinator)",
    84: "ReadShareGroupState is broker-internal (share coordinator)",
    85: "WriteShareGroupState is broker-internal (share coordinator)",
    86: "DeleteShareGroupState is broker-internal (share coordinator)",
    87: "ReadShareGroupStateSummary is broker-internal (share coordinator)",
})

assert not FORWARDED & set(NEVER_FORWARDED), "an API cannot be both forwarded and refused"
assert not FORWARDED & ANSWERED_LOCALLY, "an API is either forwarded or answered by the gateway"
