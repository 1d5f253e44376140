"""Session fixtures: the real Kafka cluster, and the gateway in front of it."""

from tests.gateway_fixtures import *  # noqa: F403
from tests.kafka_fixtures import *  # noqa: F403
