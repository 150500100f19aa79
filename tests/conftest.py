"""Fixtures shared across test modules.

Data builders live in :mod:`facebank.testing` (importable by benchmarks and examples
too); the fixtures here put them on ``tmp_path``.
"""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from facebank.testing import synthetic_arrays, write_synthetic_bank

BENCHMARKS = Path(__file__).parent / "benchmarks"


def pytest_collection_modifyitems(session, config, items):
    """Modules using the session's Ray cluster (``ray_cluster``) run last, one after another.

    The cluster starts with the first of them and stops at the end of the session; run
    last, its idle processes do not sit beside the rest of the suite on a 2-core machine.
    Whole modules move, in their collected order, so module fixtures still set up once.
    """
    uses_ray = {
        getattr(item, "module", None)
        for item in items
        if "ray_cluster" in getattr(item, "fixturenames", ())
    }
    uses_ray.discard(None)
    if uses_ray:
        items[:] = [i for i in items if getattr(i, "module", None) not in uses_ray] + [
            i for i in items if getattr(i, "module", None) in uses_ray
        ]


@pytest.fixture
def synthetic_bank(tmp_path):
    """Factory writing a bank of Gaussian clusters per engine under ``tmp_path``.

    ``synthetic_bank({"real": 30, "sdxl": 30}, name="b.zarr", dim=16, seed=0,
    sha_prefix=None, **write_kw)`` returns the ``FeatureBank``; ``write_kw`` goes to
    :func:`facebank.testing.write_synthetic_bank` (``view``, ``rows``, ``backbone``...).
    """

    def make(engines, *, name, dim=16, seed=0, sha_prefix=None, **write_kw):
        data = synthetic_arrays(engines, dim=dim, seed=seed, sha_prefix=sha_prefix)
        return write_synthetic_bank(tmp_path / name, data, **write_kw)

    return make


@pytest.fixture(scope="module")
def two_classes():
    """Tiny, easy head data: ``(X (240, 16) float32, y (240,) int64)``, class 1 shifted by 0.9."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((240, 16)).astype(np.float32)
    y = (rng.random(240) < 0.5).astype(np.int64)
    X[y == 1] += 0.9
    return X, y


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local two-CPU Ray cluster for the whole session (no dashboard; stopped at the end).

    Starting a cluster costs seconds, so every test that runs Ray in this process shares
    this one; skips where ray is not installed.
    """
    ray = pytest.importorskip("ray", reason="needs facebank[ray]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def run_benchmark(monkeypatch, capsys):
    """Run ``tests/benchmarks/SCRIPT ARGS`` as a script in this process; return its stdout.

    ``run_benchmark("bench_x.py", "--tiny")`` is ``python tests/benchmarks/bench_x.py
    --tiny`` (``__name__ == "__main__"``, the script's folder first on ``sys.path``, the
    same argv) without a fresh interpreter importing torch and the whole stack again,
    which costs seconds per benchmark on the CI machine. A non-zero exit fails the test;
    an exception propagates with its traceback. Benchmarks that measure their own
    process's peak memory, or need an environment (OMP_NUM_THREADS) read at start-up, keep
    running in a subprocess (tests/test_benchmarks_neighbours.py).
    """
    import torch

    def run(script: str, *args: str) -> str:
        path = BENCHMARKS / script
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        threads = torch.get_num_threads()
        capsys.readouterr()  # only what the script prints
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                pytest.fail(f"{script} {' '.join(args)} exited with {exc.code!r}")
        finally:
            torch.set_num_threads(threads)
        return capsys.readouterr().out

    return run
