"""docs/protocol.md stays true: every example decodes on its topic."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.protocol import decode, topics

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXAMPLE = re.compile(r"```json topic=(\S+)\n(.*?)\n```", re.DOTALL)


def test_every_example_in_the_protocol_doc_decodes_on_its_topic() -> None:
    examples = EXAMPLE.findall(DOC.read_text())
    channels = {topics.parse(topic).channel for topic, _ in examples}
    assert channels == set(topics.Channel)  # one example for each channel at least
    for topic, body in examples:
        message = decode(topic, body.encode())
        assert message.kind in {"telemetry", "state", "event", "ack", "desired", "command"}
