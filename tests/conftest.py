"""Fixtures shared across test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny arrays: one thread is as fast, and immune to a loaded machine's thread contention.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, for this session.

    Credentials are dummies; ``AWS_ENDPOINT_URL`` points every boto/s3fs client at the
    server, so nothing else is ever reached.
    """
    import os
    import socket

    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    pytest.importorskip("s3fs", reason="needs s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the local S3 server: its ``s3://NAME`` URL."""
    import uuid

    import s3fs

    name = f"facebank-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(anon=False)
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}"
