"""Schemathesis against a real `athena serve`: every operation in its /openapi.json, with generated parameters and
bodies, must never answer with a 5xx. About 3 examples per operation (~220 requests) keep it under a minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from tests.server.conftest import Server, make_server


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, models) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("fuzzed"), models).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error], timeout=15)
