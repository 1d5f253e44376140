"""Authorization of forwarded requests, as Kafka's own authorizer would make the client see it.

``authorize(api_key, version, body, decide, topics)`` takes a request body
decoded by the codec and returns an :class:`Outcome`: forward it untouched,
forward a reduced body and fix the response, answer it locally, or close.
"""

from gateway.authz.common import Decide, Outcome, TopicIds
from gateway.authz.requests import authorize

__all__ = ["Decide", "Outcome", "TopicIds", "authorize"]
