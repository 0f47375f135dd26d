"""The start-up log line says where the server listens and how it is protected, and warns when an
address others can reach has neither TLS nor tokens."""

from __future__ import annotations

import logging

import pytest
from edgecnn.serve.server import is_loopback, start_server

from tests.helpers.serving import settings_for


@pytest.fixture
def records(caplog):
    logger = logging.getLogger("edgecnn")
    logger.addHandler(caplog.handler)  # configure_logging may have stopped "edgecnn" propagating
    caplog.set_level(logging.INFO, logger="edgecnn")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("myhost.example", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_plaintext_on_every_interface_is_warned_about(tiny_model, records, tmp_path):
    with start_server(settings_for(tiny_model, host="0.0.0.0", metrics=False)):
        pass
    serving = next(r for r in records.records if r.getMessage() == "serving")
    assert (serving.tls, serving.auth, serving.reflection) == ("off", "off", True)
    assert serving.address.startswith("0.0.0.0:")
    warnings = [r for r in records.records if r.levelno == logging.WARNING and "neither TLS nor tokens" in r.getMessage()]
    assert len({id(r) for r in warnings}) == 1  # (the handler may see a record twice: direct and propagated)


def test_loopback_or_protected_servers_are_not_warned_about(tiny_model, records, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token-long-enough-to-pass-0001\n")
    with start_server(settings_for(tiny_model, metrics=False)):
        pass
    with start_server(settings_for(tiny_model, host="0.0.0.0", metrics=False, auth_token_file=tokens)):
        pass
    protected = [r for r in records.records if r.getMessage() == "serving"][-1]
    assert (protected.auth, protected.reflection) == ("bearer tokens", False)
    assert not [r for r in records.records if "neither TLS nor tokens" in r.getMessage()]
