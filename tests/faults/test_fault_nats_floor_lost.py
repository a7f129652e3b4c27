"""nats-server killed before it wrote the consumer's latest state (issue 13).

nats-server writes a consumer's state (its acknowledgement floor, what is pending) to
its file store a moment after it changes (at most every 100 ms); killed in that moment,
it starts again from the state it wrote last, and delivers again the messages
acknowledged since. Those must still find their manifests: a daemon that removed them
as soon as it read the newer floor batched the messages anew, with new tokens, and
inserted them twice (300,806 rows of 300,000 in a scale run, nats-server killed once).

The moment is made wide here: the consumer's state file is copied, more messages are
inserted and acknowledged, and nats-server is killed and given the copy back (what it
would have had on disk had the kill come before its write), within seconds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from brokerfeeds import bodies
from daemonthread import Running, count, daemon_config
from natsserver import NatsServer
from test_nats_source import nats_pipeline
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("policy", ["explicit", "all"])
def test_messages_acknowledged_again_after_a_lost_state_find_their_manifests(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    nats_server: NatsServer,
    policy: str,
) -> None:
    nats_server.make_stream()
    url = f"{endpoint.url}/{database}"
    pipeline = nats_pipeline(nats_server, ack_policy=policy)
    daemon = Running(daemon_config(tmp_path / "state", url, pipeline))
    try:
        nats_server.publish(bodies(0, 1000, 10))
        wait_for(nats_server.settled, 60, interval=0.1, what="the first messages acked")
        time.sleep(0.5)  # nats-server wrote that state
        state = next((nats_server.directory / "store").rglob("obs/chworkers/o.dat"))
        kept = tmp_path / "o.dat"
        shutil.copy(state, kept)
        for start in (1000, 2000):  # two batches: delivered again at once, they make one
            nats_server.publish(bodies(start, start + 1000, 10))
            wait_for(nats_server.settled, 60, interval=0.1, what="the next messages acked")
        time.sleep(2.5)  # the daemon reads the new floor (every 2 s)
        nats_server.publish(bodies(3000, 3100, 10))  # a manifest's write removes the old
        wait_for(nats_server.settled, 60, interval=0.1, what="the last messages acked")
        nats_server.kill()
        shutil.copy(kept, state)  # the state as written before the kill, floor lower
        nats_server.start()
        wait_for(nats_server.settled, 90, interval=0.2, what="all acked again")
        time.sleep(1)
    finally:
        daemon.stop()
    assert count(endpoint, database) == (3100, 3100)
