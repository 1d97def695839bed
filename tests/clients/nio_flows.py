"""matrix-nio (Python, unmodified, end-to-end encryption on) as people use it, against one node or
two: Alice on the first URL, Bob on the second (the same URL for one node).

Both register, upload a filter and sync with it, as a bot does with `sync_forever` (one step: a
sync, then the key uploads, queries and claims nio asks for). Alice makes a room and invites Bob;
Bob joins, they chat, Bob replies to Alice, Bob reads the history through `/messages` from his
sync token (his `next_batch`, as the spec allows) and pages on from the `end` it got; Alice makes
an encrypted room, Bob joins and learns it is encrypted, and both read each other's encrypted
messages; Bob leaves the first room and his client keeps syncing (nio checks every response
against its schema), and sees nothing sent after he left.

Prints OK on success; any failed check raises, so the process exits non-zero with the reason.

Usage: python nio_flows.py ALICE_URL BOB_URL STORE_DIR
"""

import asyncio
import os
import sys
import time

from nio.api import MessageDirection
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
)

# How long one step may wait for the other side (a message, an invite, a join across nodes).
STEP_SECONDS = 30


def check(response, kind):
    assert isinstance(response, kind), f"expected {kind.__name__}, got {response!r}"
    return response


class Person:
    """A nio client with E2EE on, syncing with its uploaded filter."""

    def __init__(self, url, name, store_dir):
        path = os.path.join(store_dir, name)
        os.makedirs(path, exist_ok=True)
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        self.client = AsyncClient(url, name, store_path=path, config=config)
        self.name = name
        self.filter_id = None
        self.since = None
        # Every timeline event this client was given, decrypted where it could: (room, event).
        self.seen = []

    async def register(self):
        check(await self.client.register(self.name, f"{self.name}'s password"), RegisterResponse)
        # What Element and most bots do: a stored filter, lazy-loading members, a short timeline.
        self.filter_id = check(
            await self.client.upload_filter(
                room={"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}
            ),
            UploadFilterResponse,
        ).filter_id
        await self.step(timeout=0)

    async def step(self, timeout=1000):
        """One round of nio's sync_forever: sync, then what its crypto asks for."""
        sync = check(
            await self.client.sync(timeout=timeout, sync_filter=self.filter_id, since=self.since),
            SyncResponse,
        )
        self.since = sync.next_batch
        for room_id, room in sync.rooms.join.items():
            for event in room.timeline.events:
                self.seen.append((room_id, event))
        await self.client.send_to_device_messages()
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        return sync

    async def until(self, what, predicate):
        """Syncs until `predicate(sync)` holds."""
        deadline = time.monotonic() + STEP_SECONDS
        while time.monotonic() < deadline:
            sync = await self.step()
            if predicate(sync):
                return sync
        raise AssertionError(f"{self.name}: {what} did not happen within {STEP_SECONDS} s")

    def bodies(self, room_id):
        return [
            getattr(event, "body", None) for (room, event) in self.seen if room == room_id
        ]

    def undecrypted(self, room_id):
        return [e.event_id for (room, e) in self.seen if room == room_id and isinstance(e, MegolmEvent)]

    async def receive(self, room_id, body):
        await self.until(f"receiving {body!r}", lambda _: body in self.bodies(room_id))

    async def send(self, room_id, body, **extra):
        content = {"msgtype": "m.text", "body": body, **extra}
        sent = check(
            await self.client.room_send(
                room_id, "m.room.message", content, ignore_unverified_devices=True
            ),
            RoomSendResponse,
        )
        return sent.event_id

    async def join(self, room_id):
        await self.until("the invite", lambda _: room_id in self.client.invited_rooms)
        check(await self.client.join(room_id), JoinResponse)
        await self.until("the joined room", lambda _: room_id in self.client.rooms)

    async def close(self):
        await self.client.close()


async def plain_room(alice, bob):
    room = check(
        await alice.client.room_create(name="nio room", invite=[bob.client.user_id]),
        RoomCreateResponse,
    ).room_id
    await bob.join(room)
    await alice.until("Bob's join", lambda _: bob.client.user_id in alice.client.rooms[room].users)

    hello = await alice.send(room, "hello from nio")
    await bob.receive(room, "hello from nio")
    reply = {"m.relates_to": {"m.in_reply_to": {"event_id": hello}}}
    await bob.send(room, "> hello from nio\n\nhello back", **reply)
    await alice.receive(room, "> hello from nio\n\nhello back")
    replies = [
        e
        for (r, e) in alice.seen
        if r == room and isinstance(e, RoomMessageText) and e.body.endswith("hello back")
    ]
    relates = replies[0].source["content"].get("m.relates_to", {})
    assert relates.get("m.in_reply_to", {}).get("event_id") == hello, f"reply: {relates}"

    # History from a sync token: back from Bob's next_batch, then on from the page's end.
    for n in range(12):
        await alice.send(room, f"older {n}")
    await bob.receive(room, "older 11")
    pages = []
    token = bob.since
    while token is not None and len(pages) < 10:
        page = check(
            await bob.client.room_messages(room, start=token, limit=5), RoomMessagesResponse
        )
        pages.append([getattr(e, "body", None) for e in page.chunk])
        token = page.end if page.chunk else None
    history = [body for page in pages for body in page if body]
    expected = [f"older {n}" for n in reversed(range(12))] + [
        "> hello from nio\n\nhello back",
        "hello from nio",
    ]
    assert history[: len(expected)] == expected, f"history from the sync token: {pages}"
    # Forwards: from the first page's `end` back up to the newest, and nothing after the newest.
    first = check(
        await bob.client.room_messages(room, start=bob.since, limit=5), RoomMessagesResponse
    )
    onwards = check(
        await bob.client.room_messages(
            room, start=first.end, direction=MessageDirection.front, limit=5
        ),
        RoomMessagesResponse,
    )
    bodies = [getattr(e, "body", None) for e in onwards.chunk]
    assert bodies == [f"older {n}" for n in range(7, 12)], f"forwards from an end: {bodies}"
    after = check(
        await bob.client.room_messages(room, start=bob.since, direction=MessageDirection.front),
        RoomMessagesResponse,
    )
    assert after.chunk == [], f"nothing after the newest message: {after.chunk}"
    return room


async def encrypted_room(alice, bob):
    initial = [
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    ]
    room = check(
        await alice.client.room_create(
            name="secret", invite=[bob.client.user_id], initial_state=initial
        ),
        RoomCreateResponse,
    ).room_id
    await alice.step()
    await bob.join(room)
    assert bob.client.rooms[room].encrypted, "Bob's client does not know the room is encrypted"
    await alice.until("Bob's join", lambda _: bob.client.user_id in alice.client.rooms[room].users)

    await alice.send(room, "a secret from alice")
    await bob.receive(room, "a secret from alice")
    await bob.send(room, "a secret from bob")
    await alice.receive(room, "a secret from bob")
    assert not bob.undecrypted(room), f"Bob could not decrypt {bob.undecrypted(room)}"
    assert not alice.undecrypted(room), f"Alice could not decrypt {alice.undecrypted(room)}"


async def leave(alice, bob, room):
    check(await bob.client.room_leave(room), RoomLeaveResponse)
    # nio validates the whole response: a left room must carry what the schema requires.
    left = await bob.until("the room showing as left", lambda sync: room in sync.rooms.leave)
    assert room in left.rooms.leave
    await alice.until("Bob's leave", lambda _: bob.client.user_id not in alice.client.rooms[room].users)
    await alice.send(room, "after bob left")
    # Bob's client goes on syncing cleanly and never sees what was sent after he left.
    for _ in range(3):
        await bob.step(timeout=500)
    assert "after bob left" not in bob.bodies(room), "Bob saw a message sent after he left"


async def main(alice_url, bob_url, store_dir):
    alice = Person(alice_url, "alice", store_dir)
    bob = Person(bob_url, "bob", store_dir)
    try:
        await alice.register()
        await bob.register()
        room = await plain_room(alice, bob)
        await encrypted_room(alice, bob)
        await leave(alice, bob, room)
        print("OK")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
