"""Getting tokens the way clients do: the OAuth client-credentials grant against the dev IdP."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

from aiokafka.abc import AbstractTokenProvider as AioTokenProvider
from kafka.net.sasl.oauth import AbstractTokenProvider as KafkaPythonTokenProvider

CLIENTS = {
    "etl-job": {"secret": "dev-only-etl-secret", "groups": ["etl"]},
    "analyst": {"secret": "dev-only-analyst-secret", "groups": ["analysts"]},
    "approver": {"secret": "dev-only-approver-secret", "groups": ["approvers"]},
}


def fetch_token(token_endpoint: str, client_id: str = "etl-job", secret: str | None = None) -> str:
    secret = CLIENTS[client_id]["secret"] if secret is None else secret
    credentials = f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(secret)}".encode()
    request = urllib.request.Request(
        token_endpoint, data=b"grant_type=client_credentials", method="POST",
        headers={"Authorization": "Basic " + base64.b64encode(credentials).decode(),
                 "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["access_token"]


class KafkaPythonProvider(KafkaPythonTokenProvider):
    def __init__(self, token_endpoint: str, client_id: str = "etl-job") -> None:
        self.token_endpoint, self.client_id = token_endpoint, client_id

    def token(self) -> str:
        return fetch_token(self.token_endpoint, self.client_id)


class AioKafkaProvider(AioTokenProvider):
    def __init__(self, token_endpoint: str, client_id: str = "etl-job") -> None:
        self.token_endpoint, self.client_id = token_endpoint, client_id

    async def token(self) -> str:
        return fetch_token(self.token_endpoint, self.client_id)


def java_client_properties(token_endpoint: str, client_id: str = "etl-job") -> str:
    secret = CLIENTS[client_id]["secret"]
    return (
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=OAUTHBEARER\n"
        "sasl.login.callback.handler.class="
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler\n"
        f"sasl.oauthbearer.token.endpoint.url={token_endpoint}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
        f'clientId="{client_id}" clientSecret="{secret}";\n'
    )


def librdkafka_settings(token_endpoint: str, client_id: str = "etl-job") -> dict[str, str]:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": client_id,
            "sasl.oauthbearer.client.secret": CLIENTS[client_id]["secret"],
            "sasl.oauthbearer.token.endpoint.url": token_endpoint}
