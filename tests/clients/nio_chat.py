"""matrix-nio (Python) against a Hyphae node: register, log in on a second device, create a room,
invite, join, chat, read history, and see a typing notification. Prints OK on success; any failed
check raises, so the process exits non-zero with the reason.

Usage: python nio_chat.py http://127.0.0.1:PORT
"""

import asyncio
import sys

from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)


def check(response, kind):
    assert isinstance(response, kind), f"expected {kind.__name__}, got {response!r}"
    return response


async def timeline_bodies(client, room_id, since, want, attempts=10):
    """Syncs until `want` shows in the room's timeline; returns the bodies seen and next_batch."""
    seen = []
    for _ in range(attempts):
        sync = check(await client.sync(timeout=2000, since=since), SyncResponse)
        since = sync.next_batch
        room = sync.rooms.join.get(room_id)
        if room:
            seen += [getattr(e, "body", None) for e in room.timeline.events]
        if want in seen:
            return seen, since
    raise AssertionError(f"{client.user_id} never saw {want!r}; saw {seen}")


async def main(url):
    alice = AsyncClient(url, "alice")
    bob = AsyncClient(url, "bob")
    try:
        check(await alice.register("alice", "alice's password"), RegisterResponse)
        check(await bob.register("bob", "bob's password"), RegisterResponse)

        room = check(
            await alice.room_create(name="nio room", invite=[bob.user_id]), RoomCreateResponse
        )
        first = check(await bob.sync(timeout=0), SyncResponse)
        assert room.room_id in first.rooms.invite, f"no invite in {first.rooms}"
        check(await bob.join(room.room_id), JoinResponse)

        check(await alice.sync(timeout=0), SyncResponse)
        check(
            await alice.room_send(
                room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"}
            ),
            RoomSendResponse,
        )
        _, since = await timeline_bodies(bob, room.room_id, first.next_batch, "hello from nio")

        # Bob on a second device, logged in with his password, reads the history.
        bob_laptop = AsyncClient(url, "bob")
        check(await bob_laptop.login("bob's password", device_name="laptop"), LoginResponse)
        check(await bob_laptop.sync(timeout=0), SyncResponse)
        history = check(
            await bob_laptop.room_messages(room.room_id, start="", limit=20), RoomMessagesResponse
        )
        bodies = [getattr(e, "body", None) for e in history.chunk]
        assert "hello from nio" in bodies, f"history: {bodies}"
        await bob_laptop.close()

        await alice.room_typing(room.room_id, typing_state=True, timeout=5000)
        sync = check(await bob.sync(timeout=3000, since=since), SyncResponse)
        typing = [
            e.users
            for e in sync.rooms.join[room.room_id].ephemeral
            if type(e).__name__ == "TypingNoticeEvent"
        ]
        assert [alice.user_id] in typing, f"typing: {typing}"
        print("OK")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
