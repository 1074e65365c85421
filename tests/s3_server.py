"""A real S3 API server on 127.0.0.1 for tests: moto's standalone server, in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

# What the jobs of the tests name; the values are moto's: any key works against it.
KEY_ENV = "BR_TEST_S3_KEY_ID"
SECRET_ENV = "BR_TEST_S3_SECRET"
KEY_VALUE = "AKIDTESTKEYBATCHROUTE"
SECRET_VALUE = "s3cr3t-value-never-written"


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str

    def filesystem(self) -> pafs.S3FileSystem:
        host = self.endpoint_url.removeprefix("http://")
        return pafs.S3FileSystem(
            endpoint_override=host,
            scheme="http",
            access_key=KEY_VALUE,
            secret_key=SECRET_VALUE,
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def storage_options(self) -> str:
        """The job's `storage_options` inline table for this server."""
        return (
            f'{{ endpoint_url = "{self.endpoint_url}", region = "us-east-1",'
            f' access_key_id_env = "{KEY_ENV}", secret_access_key_env = "{SECRET_ENV}" }}'
        )


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """moto's server on a free loopback port, stopped afterwards."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
