"""The one mapping of upstream transport failures: a timeout is a 504, anything else a 502, worded by phase."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.upstream import Phase, transport_error


@pytest.mark.parametrize(
    ("phase", "timeout", "broke"),
    [
        ("connect", "The upstream provider did not answer in time.", "Could not reach the upstream provider"),
        ("body", "The upstream provider stopped sending in time.", "The upstream connection failed"),
        ("stream", "The upstream provider stopped sending in time.", "The upstream stream broke"),
    ],
)
def test_transport_error(phase: Phase, timeout: str, broke: str) -> None:
    late = transport_error(TimeoutError(), phase)
    assert isinstance(late, UpstreamTimeout) and late.status == 504 and late.message == timeout
    gone = transport_error(aiohttp.ServerDisconnectedError(), phase)
    assert isinstance(gone, UpstreamUnreachable) and gone.status == 502
    assert gone.message == f"{broke}: ServerDisconnectedError."
