"""`zbroker monitor` against a real broker and nodes: Prometheus' /metrics, the JSON API,
the live feed (server-sent events) and the dead-letter actions, over real HTTP."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import Client, TaskFailed
from tests.e2e.conftest import Cluster, free_port
from tests.support import wait_until


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def post(url: str, body: dict[str, Any], content_type: str = "application/json") -> Any:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels (sorted)."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def monitored(cluster: Cluster) -> tuple[Cluster, str]:
    cluster.start_broker("--store", "none")
    cluster.start_node(name="n1", functions="math")
    cluster.wait_nodes("n1")
    return cluster, cluster.start_monitor("--interval", "0.2")


def test_metrics_follow_prometheus_conventions_and_count_what_ran(
    monitored: tuple[Cluster, str],
) -> None:
    cluster, url = monitored
    with Client(cluster.url) as client:
        assert client.map("add", [(i, 1) for i in range(50)]) == [i + 1 for i in range(50)]
        with pytest.raises(TaskFailed):
            client.execute("divide", 1, 0)

    def scraped() -> dict[Any, float] | None:
        found = samples(get(f"{url}/metrics"))
        done = found.get(
            ("ztb_tasks_answered_total", (("function", "add"), ("outcome", "succeeded")))
        )
        return found if done == 50 else None

    found = wait_until(scraped, 10, what="the scrape to count 50 successes")
    assert found[("ztb_up", ())] == 1.0
    failed = ("ztb_tasks_answered_total", (("function", "divide"), ("outcome", "failed")))
    assert found[failed] == 1.0
    assert found[("ztb_tasks_dead_lettered_total", (("function", "divide"),))] == 1.0
    assert found[("ztb_task_end_to_end_seconds_count", (("function", "add"),))] == 50.0
    inf = ("ztb_task_run_seconds_bucket", (("function", "add"), ("le", "+Inf")))
    assert found[inf] == 50.0
    assert found[("ztb_nodes", ())] == 1.0
    [slots] = [v for (name, _), v in found.items() if name == "ztb_node_slots"]
    assert slots == 1.0
    assert found[("ztb_messages_received_total", ())] >= 3  # REGISTER, EXECUTEs, RESULTs
    assert found[("ztb_received_bytes_total", ())] > 50 * 20  # 50 tasks' frames at least
    assert all(name.startswith("ztb_") for name, _ in found)


def test_the_api_and_the_live_feed_show_the_broker(monitored: tuple[Cluster, str]) -> None:
    cluster, url = monitored
    status = orjson.loads(get(f"{url}/api/status"))
    assert status["broker"] == cluster.url and status["error"] is None
    assert [n["name"] for n in status["status"]["nodes"]] == ["n1"]
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "text/event-stream"
        seqs: list[int] = []
        while len(seqs) < 3:  # a snapshot at once, then one per poll
            line = response.fp.readline()
            if line.startswith(b"data: "):
                seqs.append(orjson.loads(line[6:])["seq"])
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
    finally:
        connection.close()
    history = orjson.loads(get(f"{url}/api/history?seconds=60"))
    assert history and {"at", "throughput", "p50", "p99", "queued", "nodes"} <= set(history[-1])


def test_dead_letters_are_replayed_and_purged_from_the_page_api(
    monitored: tuple[Cluster, str],
) -> None:
    cluster, url = monitored
    with Client(cluster.url) as client:
        for _ in range(2):
            with pytest.raises(TaskFailed):
                client.execute("divide", 1, 0)

    def listed() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = orjson.loads(get(f"{url}/api/status"))["dead_letters"]
        return entries if len(entries) == 2 else []

    first, _ = wait_until(listed, 15, what="two dead letters listed")
    assert first["function"] == "divide"
    assert post(f"{url}/api/dlq/replay", {"task_id": first["task_id"]})["replayed"] == [
        first["task_id"]
    ]

    def buried_again() -> bool:
        status = orjson.loads(get(f"{url}/api/status"))["status"]
        return bool(status["counters"].get("dead_lettered") == 3)

    wait_until(buried_again, 15, what="the replayed task to fail again")
    assert post(f"{url}/api/dlq/purge", {}) == {"purged": 2}
    with pytest.raises(urllib.error.HTTPError) as refused:  # a form post from elsewhere
        post(f"{url}/api/dlq/purge", {}, content_type="application/x-www-form-urlencoded")
    assert refused.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(f"{url}/nothing-here")
    assert missing.value.code == 404


def test_a_broker_that_goes_away_is_shown_down(monitored: tuple[Cluster, str]) -> None:
    cluster, url = monitored
    assert cluster.broker is not None
    cluster.broker.stop()

    def down() -> bool:
        found = samples(get(f"{url}/metrics"))
        return found[("ztb_up", ())] == 0.0

    wait_until(down, 20, what="the monitor to show the broker down")
    assert orjson.loads(get(f"{url}/api/status"))["error"]


def test_zbroker_top_shows_the_nodes_the_queue_and_the_failures(cluster: Cluster) -> None:
    cluster.start_broker("--store", "none")
    cluster.start_node(name="n1", functions="math")
    cluster.start_node(name="n2", functions="math")
    cluster.wait_nodes("n1", "n2")
    with Client(cluster.url) as client:
        assert client.map("add", [(i, 1) for i in range(200)]) == [i + 1 for i in range(200)]
        with pytest.raises(TaskFailed):
            client.execute("divide", 1, 0)
    shown = cluster.zbroker("top", "--once", "--interval", "0.2")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "2 znodes, 2 node processes" in out
    assert " n1 " in out and " n2 " in out
    assert "ZeroDivisionError" in out and "divide" in out
    assert "throughput" in out and "dead letters 1" in out


def test_zbroker_top_says_when_nothing_answers(cluster: Cluster) -> None:
    cluster.url = "tcp://127.0.0.1:9"  # nothing listens there
    shown = cluster.zbroker("top", "--once", "--interval", "0.1", "--timeout", "0.5")
    assert shown.returncode == 3
    assert "tcp://127.0.0.1:9" in shown.stderr and "--broker" in shown.stderr


def test_zbroker_start_runs_the_monitor_beside_it_and_stops_it(cluster: Cluster) -> None:
    port = free_port()
    broker = cluster.start_broker("--store", "none", "--monitor", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    def answered() -> dict[Any, float] | None:
        try:
            found = samples(get(f"{url}/metrics"))
        except OSError:
            return None  # not listening yet
        # Before its first poll has an answer the monitor says ztb_up 0.
        return found if found[("ztb_up", ())] == 1.0 else None

    found = wait_until(answered, 20, what="the monitor to read its broker", alive=[broker])
    assert found[("ztb_tasks_queued", ())] == 0.0
    broker.stop()

    def gone() -> bool:
        try:
            get(f"{url}/metrics")
        except OSError:
            return True
        return False

    wait_until(gone, 10, what="the monitor to stop with its broker")


def test_an_action_with_a_bad_length_is_refused_and_the_monitor_goes_on(
    monitored: tuple[Cluster, str],
) -> None:
    _, url = monitored
    parts = urlsplit(url)
    for length in ("-1", "lots", "99999999"):
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.putrequest("POST", "/api/dlq/purge")
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", length)
            connection.endheaders()
            response = connection.getresponse()
            assert response.status == 400
            assert "Content-Length" in orjson.loads(response.read())["error"]
        finally:
            connection.close()
    assert orjson.loads(get(f"{url}/api/status"))["error"] is None  # still serving
