"""Shared fixtures: a real Redis for the whole session, and a clean database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.redis_server import start_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set (its db is flushed by ``clean_redis``!), else a private redis-server."""
    env = os.environ.get("REDIS_URL")
    if env:
        yield env
        return
    server = start_redis()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session Redis, emptied (FLUSHDB) for this test."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url
