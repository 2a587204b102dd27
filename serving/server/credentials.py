"""gRPC server credentials as tensorflow_model_server builds them: ALTS, TLS from an SSLConfig file, or none.

`--ssl_config_file` is a text-format `tensorflow.serving.SSLConfig` (tensorflow_serving/config/
ssl_config.proto, which tensorflow-serving-api does not ship): the server's PEM key and certificate,
an optional CA for client certificates and whether a client must present one. The same file works
with the official image.
"""

from __future__ import annotations

import grpc

from serving import protos
from serving.model_config import ConfigFileError, parse_text_proto, read_config_text


def ssl_config_class() -> type:
    """`tensorflow.serving.SSLConfig`."""
    return protos.declared_messages(
        "tensorflow_serving/config/ssl_config.proto",
        "tensorflow.serving",
        (
            (
                "SSLConfig",
                (
                    ("server_key", 1, "string"),
                    ("server_cert", 2, "string"),
                    ("custom_ca", 3, "string"),
                    ("client_verify", 4, "bool"),
                ),
            ),
        ),
    ).SSLConfig


def parse_ssl_config(text: str, source: str = "SSL config") -> grpc.ServerCredentials:
    """TLS credentials from an SSLConfig text proto's content.

    Raises:
        ConfigFileError: not an SSLConfig, or without a key and certificate.
    """
    message = parse_text_proto(text, ssl_config_class()(), source)
    if not message.server_key or not message.server_cert:
        raise ConfigFileError(f"{source}: an SSLConfig needs both server_key and server_cert (PEM)")
    if message.client_verify and not message.custom_ca:
        raise ConfigFileError(f"{source}: client_verify needs custom_ca, the CA that signs the client certificates")
    return grpc.ssl_server_credentials(
        [(message.server_key.encode(), message.server_cert.encode())],
        root_certificates=message.custom_ca.encode() or None,
        require_client_auth=message.client_verify,
    )


def server_credentials(use_alts_credentials: bool, ssl_config_file: str) -> grpc.ServerCredentials | None:
    """The credentials every gRPC listening address gets; None for plaintext.

    Raises:
        ConfigFileError: both kinds asked for (tensorflow_model_server refuses that too), or a bad SSL file.
    """
    if use_alts_credentials and ssl_config_file:
        raise ConfigFileError("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if use_alts_credentials:
        return grpc.alts_server_credentials()
    if ssl_config_file:
        return parse_ssl_config(read_config_text(ssl_config_file), ssl_config_file)
    return None
