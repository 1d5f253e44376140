"""Session fixtures: the real Kafka cluster, the gateway in front of it, and a throwaway PostgreSQL server."""

from tests.gateway_fixtures import *  # noqa: F403
from tests.kafka_fixtures import *  # noqa: F403
from tests.postgres_fixtures import *  # noqa: F403
