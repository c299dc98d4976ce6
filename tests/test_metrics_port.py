"""A taken metrics port: the default one is replaced by a free one with a warning, an explicit one is an error."""

import logging
import socket
import urllib.request

import pytest

from orchestrator.core.errors import UserError
from orchestrator.engine import metrics
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.state.settings import load_config


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that another process is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def exporter():
    exporter = PipelineMetrics("run-a", stages=1)
    yield exporter
    exporter.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_default_is_unset_and_an_explicit_port_is_kept():
    assert load_config([]).metrics.port is None
    assert load_config([], ["metrics.port=9464"]).metrics.port == 9464
    with pytest.raises(UserError, match="metrics.port must be in 0..65535"):
        load_config([], ["metrics.port=70000"])


def test_unset_port_moves_to_a_free_one_with_a_warning(taken_port, exporter, monkeypatch, caplog):
    monkeypatch.setattr(metrics, "DEFAULT_PORT", taken_port)
    monkeypatch.setattr(metrics, "AUTO_PORTS", (taken_port, taken_port, 0))
    with caplog.at_level(logging.WARNING, logger="orchestrator.engine.metrics"):
        exporter.serve("127.0.0.1", None)
    port = exporter.server.server_port
    assert port not in (0, taken_port)
    assert [record.getMessage() for record in caplog.records] == [
        f"metrics port {taken_port} is taken; serving metrics on http://127.0.0.1:{port}/metrics instead"]
    assert 'pavdm_stage_restarts_total{run_id="run-a"} 0.0' in scrape(port)


def test_unset_port_takes_the_default_quietly_when_free(exporter, monkeypatch, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    monkeypatch.setattr(metrics, "DEFAULT_PORT", free)
    monkeypatch.setattr(metrics, "AUTO_PORTS", (free, 0))
    exporter.serve("127.0.0.1", None)
    assert exporter.server.server_port == free
    assert not caplog.records


def test_explicit_taken_port_is_a_one_line_error(taken_port, exporter):
    with pytest.raises(UserError) as caught:
        exporter.serve("127.0.0.1", taken_port)
    assert str(caught.value) == (f"metrics.port {taken_port} is taken on 127.0.0.1: choose another, "
                                 "metrics.port=null for a free one, or metrics.port=0 for none")
    assert exporter.server is None


def test_port_zero_serves_nothing(exporter):
    exporter.serve("127.0.0.1", 0)
    assert exporter.server is None


def test_other_bind_failures_are_a_user_error(exporter):
    with pytest.raises(UserError, match="cannot serve metrics on 192.0.2.1:9464: Cannot assign requested address"):
        exporter.serve("192.0.2.1", None)  # an address of no interface here (TEST-NET-1)
