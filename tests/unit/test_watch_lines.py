"""How a watch's answer is cut into events (tenantry.watches.lines): pure, over chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tenantry.watches import lines


async def stream(*chunks: bytes, then_hang: bool = False) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if then_hang:
        await asyncio.Event().wait()


async def read(chunks: AsyncIterator[bytes], silence: float = 5.0) -> list[bytes]:
    return [line async for line in lines(chunks, silence)]


def test_lines_are_cut_wherever_the_chunks_end() -> None:
    events = b'{"type":"ADDED"}\n{"type":"MODIFIED","object":{"a":"x\\ny"}}\n\n{"type":"DELETED"}\n'
    expected = [
        b'{"type":"ADDED"}',
        b'{"type":"MODIFIED","object":{"a":"x\\ny"}}',
        b'{"type":"DELETED"}',
    ]
    # Every way of cutting the stream in three: mid-line, at an end, one byte at a time.
    for first in range(len(events) + 1):
        for second in range(first, len(events) + 1):
            chunks = (events[:first], events[first:second], events[second:])
            assert asyncio.run(read(stream(*chunks))) == expected, (first, second)
    assert asyncio.run(read(stream(*(bytes([b]) for b in events)))) == expected


def test_a_last_line_without_its_end_is_read_and_blank_lines_are_not() -> None:
    assert asyncio.run(read(stream(b"\n \n{}\r\n", b'{"a":', b"1}"))) == [b"{}\r", b'{"a":1}']
    assert asyncio.run(read(stream(b"\n\n", b" "))) == []
    assert asyncio.run(read(stream())) == []


def test_a_silent_stream_is_taken_for_dead() -> None:
    got: list[bytes] = []

    async def collect() -> None:
        async for line in lines(stream(b"{}\n{", then_hang=True), silence=0.05):
            got.append(line)

    with pytest.raises(TimeoutError):
        asyncio.run(collect())
    assert got == [b"{}"]


def test_a_next_line_character_inside_a_value_ends_no_line() -> None:
    """U+0085 (NEL), which the API server's JSON leaves unescaped, ends a line for str's
    splitlines (and so httpx's text lines) but not here: only a newline byte does."""
    event = '{"object":{"data":{"k":"a\u0085b\u2028c"}}}'.encode()
    assert asyncio.run(read(stream(event + b"\n", event))) == [event, event]
