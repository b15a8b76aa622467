"""Fixtures shared by unit and integration tests: a fresh database per test, on each store.

SQLite always; PostgreSQL when COMMS_TEST_POSTGRES_URL (default: this machine's
postgresql://root@127.0.0.1:5432/test) answers. With COMMS_REQUIRE_POSTGRES=1 (as in CI)
an unreachable PostgreSQL fails the run instead of skipping its half."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import peewee as pw
import psycopg2
import pytest

from comms import db
from tests.tokens import Keys

POSTGRES_URL = os.environ.get("COMMS_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")


def _postgres_error() -> str | None:
    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        return str(error).strip()
    return None


@pytest.fixture(autouse=True)
def _root_logger_kept() -> Iterator[None]:
    """Each test leaves the root logger as it found it: cli.main and logs.configure point it
    at the test's stream, which pytest closes afterwards (later lines would fail to write)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    error = _postgres_error()
    if error is None:
        return
    if os.environ.get("COMMS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required but {POSTGRES_URL} is unreachable: {error}")
    pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {error}")


@contextlib.contextmanager
def fresh_database_url(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to an empty database: a new SQLite file, or a new PostgreSQL schema."""
    if store == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'comms.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def debian_binary(name: str, package: str) -> str:
    """The path of a Debian package's program a test module needs. Missing, the module fails
    in CI (.ci/run installs the package) and is skipped elsewhere, saying what to install."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Debian's {package}: .ci/run installs it", pytrace=False)
        pytest.skip(
            f"no {name}: `apt-get install {package}` to run this test (CI does)",
            allow_module_level=True,
        )
    return found


STORES = ["sqlite", "postgres"]
# The keys of every sequence answer, in the order the contract prints them.
SEQUENCE_KEYS = [
    "id",
    "brand_id",
    "name",
    "description",
    "status",
    "created_at",
    "updated_at",
    "steps",
    "etag",
    "revision",
    "deleted_at",
]


@pytest.fixture(params=STORES)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    with fresh_database_url(request.param, tmp_path_factory) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[pw.Database]:
    """The service's database on a fresh store, migrated."""
    database = db.prepare(database_url)
    yield database
    database.close_all()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Signing keys for the session and the JWKS that trusts two of them."""
    return Keys.create(tmp_path_factory.mktemp("keys"))
