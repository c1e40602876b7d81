"""Kafka API keys: their names and the first *flexible* version of each (sans-IO tables).

A request's header version follows from its API key and version (KIP-482): header v1
(``api_key``, ``api_version``, ``correlation_id``, ``client_id``) for the classic versions,
v2 (the same plus a tagged-field section) from the API's first flexible version on, and v0 (no
``client_id``) only for ControlledShutdown v0. A response's header is v0 (the correlation id)
or, for flexible versions, v1 (plus tagged fields), except ApiVersions, whose response header
is always v0 so that a client can read it before it knows what the broker speaks.

The table is Apache Kafka's message schemas' ``flexibleVersions`` (clients/src/main/resources/
common/message/*.json). An API key missing from it is one this codec does not know: its header
is read as v1 or v2 by that key's position (every API added after KIP-482, key 45 on except
OffsetDelete, is flexible from v0), and it is forwarded like any other.
"""

from __future__ import annotations

from typing import Final

PRODUCE: Final = 0
FETCH: Final = 1
METADATA: Final = 3
CONTROLLED_SHUTDOWN: Final = 7
FIND_COORDINATOR: Final = 10
JOIN_GROUP: Final = 11
HEARTBEAT: Final = 12
LEAVE_GROUP: Final = 13
SYNC_GROUP: Final = 14
API_VERSIONS: Final = 18
INIT_PRODUCER_ID: Final = 22

#: API key -> (name, first flexible version; None: never flexible).
APIS: Final[dict[int, tuple[str, int | None]]] = {
    0: ("Produce", 9),
    1: ("Fetch", 12),
    2: ("ListOffsets", 6),
    3: ("Metadata", 9),
    4: ("LeaderAndIsr", 4),
    5: ("StopReplica", 2),
    6: ("UpdateMetadata", 6),
    7: ("ControlledShutdown", 3),
    8: ("OffsetCommit", 8),
    9: ("OffsetFetch", 6),
    10: ("FindCoordinator", 3),
    11: ("JoinGroup", 6),
    12: ("Heartbeat", 4),
    13: ("LeaveGroup", 4),
    14: ("SyncGroup", 4),
    15: ("DescribeGroups", 5),
    16: ("ListGroups", 3),
    17: ("SaslHandshake", None),
    18: ("ApiVersions", 3),
    19: ("CreateTopics", 5),
    20: ("DeleteTopics", 4),
    21: ("DeleteRecords", 2),
    22: ("InitProducerId", 2),
    23: ("OffsetForLeaderEpoch", 4),
    24: ("AddPartitionsToTxn", 3),
    25: ("AddOffsetsToTxn", 3),
    26: ("EndTxn", 3),
    27: ("WriteTxnMarkers", 1),
    28: ("TxnOffsetCommit", 3),
    29: ("DescribeAcls", 2),
    30: ("CreateAcls", 2),
    31: ("DeleteAcls", 2),
    32: ("DescribeConfigs", 4),
    33: ("AlterConfigs", 2),
    34: ("AlterReplicaLogDirs", 2),
    35: ("DescribeLogDirs", 2),
    36: ("SaslAuthenticate", 2),
    37: ("CreatePartitions", 2),
    38: ("CreateDelegationToken", 2),
    39: ("RenewDelegationToken", 2),
    40: ("ExpireDelegationToken", 2),
    41: ("DescribeDelegationToken", 2),
    42: ("DeleteGroups", 2),
    43: ("ElectLeaders", 2),
    44: ("IncrementalAlterConfigs", 1),
    45: ("AlterPartitionReassignments", 0),
    46: ("ListPartitionReassignments", 0),
    47: ("OffsetDelete", None),
    48: ("DescribeClientQuotas", 1),
    49: ("AlterClientQuotas", 1),
    50: ("DescribeUserScramCredentials", 0),
    51: ("AlterUserScramCredentials", 0),
    55: ("DescribeQuorum", 0),
    57: ("UpdateFeatures", 0),
    60: ("DescribeCluster", 0),
    61: ("DescribeProducers", 0),
    65: ("DescribeTransactions", 0),
    66: ("ListTransactions", 0),
    68: ("ConsumerGroupHeartbeat", 0),
    69: ("ConsumerGroupDescribe", 0),
}

#: API names by key, as strings (the ``api`` metadata value), made once.
API_NAMES: Final[dict[int, str]] = {key: name for key, (name, _) in APIS.items()}


def api_name(api_key: int) -> str:
    """``Produce``, ``Fetch``, ...; ``api_<key>`` for a key this table does not hold."""
    name = API_NAMES.get(api_key)
    return name if name is not None else f"api_{api_key}"


def is_flexible(api_key: int, api_version: int) -> bool:
    """Whether ``api_version`` of ``api_key`` uses compact types and tagged fields."""
    entry = APIS.get(api_key)
    if entry is None:
        return api_key >= 45
    first = entry[1]
    return first is not None and api_version >= first


def request_header_version(api_key: int, api_version: int) -> int:
    if api_key == CONTROLLED_SHUTDOWN and api_version == 0:
        return 0
    return 2 if is_flexible(api_key, api_version) else 1


def response_header_flexible(api_key: int, api_version: int) -> bool:
    """Whether the response header carries tagged fields (header v1)."""
    return api_key != API_VERSIONS and is_flexible(api_key, api_version)
