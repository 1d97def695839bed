"""Bob, on matrix-nio, for the Hydrogen test (tests/tests/hydrogen_browser.rs): he registers on his
node, creates an unencrypted room and invites Alice (on another node, using Hydrogen), then waits
for her to join, writes to her, reads her answer and her new name, and renames himself. Each step
prints a line the test waits for; any failed check raises, so the process exits non-zero.

Usage: python nio_hydrogen_peer.py http://127.0.0.1:PORT @alice:<her server name>
"""

import asyncio
import sys
import time

from nio import (
    AsyncClient,
    ProfileSetDisplayNameResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

ROOM_NAME = "Hydrogen and nio"


def check(response, kind):
    assert isinstance(response, kind), f"expected {kind.__name__}, got {response!r}"
    return response


def say(line):
    print(line, flush=True)


class Timeline:
    """Bob's view of the room's timeline, synced on demand."""

    def __init__(self, client, room_id, since):
        self.client, self.room_id, self.since = client, room_id, since

    async def until(self, what, found, within=90):
        """Syncs until an event of the room satisfies `found`; returns it."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            sync = check(await self.client.sync(timeout=2000, since=self.since), SyncResponse)
            self.since = sync.next_batch
            room = sync.rooms.join.get(self.room_id)
            for event in room.timeline.events if room else []:
                if found(event):
                    return event
        raise AssertionError(f"Bob never saw {what}")


async def main(url, alice):
    bob = AsyncClient(url, "bob")
    try:
        check(await bob.register("bob", "bob's password"), RegisterResponse)
        check(await bob.set_displayname("Bob"), ProfileSetDisplayNameResponse)
        room = check(await bob.room_create(name=ROOM_NAME, invite=[alice]), RoomCreateResponse)
        first = check(await bob.sync(timeout=0), SyncResponse)
        say(f"room {room.room_id}")
        timeline = Timeline(bob, room.room_id, first.next_batch)

        await timeline.until(
            "Alice join",
            lambda e: isinstance(e, RoomMemberEvent)
            and e.state_key == alice
            and e.membership == "join",
        )
        say("alice joined")
        check(
            await bob.room_send(
                room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"}
            ),
            RoomSendResponse,
        )
        say("sent hello from nio")
        await timeline.until(
            "Alice's message",
            lambda e: isinstance(e, RoomMessageText)
            and e.sender == alice
            and e.body == "hello from hydrogen",
        )
        say("received hello from hydrogen")
        await timeline.until(
            "Alice's new name",
            lambda e: isinstance(e, RoomMemberEvent)
            and e.state_key == alice
            and e.content.get("displayname") == "Alice Liddell",
        )
        say("saw alice renamed")
        check(await bob.set_displayname("Bob Builder"), ProfileSetDisplayNameResponse)
        say("renamed")
        say("OK")
    finally:
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
