"""An S3-compatible server on loopback for tests: moto's server mode, in a thread.

Only 127.0.0.1 is used. The yielded environment points pyarrow.fs and boto3 at it (and
keeps the AWS SDK from looking for credentials anywhere else); set it in every process
that touches the store: the test, the driver, the Ray nodes (their workers inherit it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """Run a server holding an empty `bucket`; yields the environment that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups off loopback
    }
    try:
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()
