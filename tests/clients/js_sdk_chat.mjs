// matrix-js-sdk (what Element Web is built on), with its Rust crypto, against two Hyphae nodes:
// Alice on node A and Bob on node B register (UIA, dummy stage), start their clients with lazy
// loading of members, chat in an encrypted private room across the two servers, page back through
// the history, see a rename and a remote profile, and Bob leaves. Each step prints `ok <step>` or
// `FAIL <step>: <why>`; the last line is OK when every step passed, else the process exits 1.
//
// Usage: HYPHAE_JS=<folder with node_modules> node js_sdk_chat.mjs http://A http://B

import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { format } from "node:util";

const [nodeA, nodeB] = process.argv.slice(2);
if (!nodeA || !nodeB || !process.env.HYPHAE_JS) {
    console.error("usage: HYPHAE_JS=<folder with node_modules> node js_sdk_chat.mjs URL_A URL_B");
    process.exit(2);
}
// The steps' verdicts go to stdout; everything the SDK logs (to the console) goes to stderr.
const say = (line) => process.stdout.write(`${line}\n`);
console.log = console.info = console.debug = (...args) => process.stderr.write(`${format(...args)}\n`);
// matrix-js-sdk asks for Node 22 only for Promise.withResolvers (ES2024, in every browser Element
// supports): the machine's Node 20 gets the standard definition, the SDK itself is unchanged.
Promise.withResolvers ??= function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((yes, no) => {
        [resolve, reject] = [yes, no];
    });
    return { promise, resolve, reject };
};
// The packages are installed outside the clone (scripts/test.sh): resolve them from there.
const resolve = createRequire(join(process.env.HYPHAE_JS, "package.json")).resolve;
const sdk = await import(pathToFileURL(resolve("matrix-js-sdk")).href);

const PASSWORD = "correct horse battery staple";
const WAIT_MS = 30_000;
const failures = [];

/** Runs one step; a failed step is recorded, and unless `carryOn` the run ends there. */
async function step(name, run, { carryOn = false } = {}) {
    try {
        await run();
        say(`ok   ${name}`);
    } catch (error) {
        // A failed check says what the user would have seen; anything else, where it broke.
        say(`FAIL ${name}: ${error instanceof CheckFailed ? error.message : (error?.stack ?? error)}`);
        failures.push(name);
        if (!carryOn) throw error;
    }
}

class CheckFailed extends Error {}

function check(condition, why) {
    if (!condition) throw new CheckFailed(why);
}

/** Polls `probe` until it returns something truthy; returns that, or throws naming `what`. */
async function until(what, probe, ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
        await new Promise((done) => setTimeout(done, 100));
    }
}

/** Registers as Element does: a first request without auth is answered with the UIA flows, then
 *  the dummy stage completes it in the same session. */
async function register(baseUrl, username) {
    const anonymous = sdk.createClient({ baseUrl });
    let session;
    try {
        await anonymous.registerRequest({ username, password: PASSWORD });
        throw new Error("registered without user-interactive auth");
    } catch (error) {
        check(error.httpStatus === 401, `first register: ${error}`);
        const flows = error.data?.flows ?? [];
        check(
            flows.some((flow) => flow.stages?.length === 1 && flow.stages[0] === "m.login.dummy"),
            `no dummy flow offered: ${JSON.stringify(error.data)}`,
        );
        session = error.data.session;
    }
    return anonymous.registerRequest({
        username,
        password: PASSWORD,
        initial_device_display_name: "matrix-js-sdk",
        auth: { type: "m.login.dummy", session },
    });
}

/** A client as Element starts one: an in-memory store, Rust crypto, members lazily loaded. Every
 *  HTTP exchange is recorded (method, path, status) to check what the client asked and got. */
async function startClient(baseUrl, registered) {
    const exchanges = [];
    const fetchFn = async (url, init) => {
        const { pathname, searchParams } = new URL(url);
        // Recorded when sent (a long-polling sync answers late); its status once answered.
        const exchange = { method: init?.method ?? "GET", pathname, searchParams, status: null };
        exchanges.push(exchange);
        const response = await fetch(url, init);
        exchange.status = response.status;
        return response;
    };
    const client = sdk.createClient({
        baseUrl,
        userId: registered.user_id,
        accessToken: registered.access_token,
        deviceId: registered.device_id,
        store: new sdk.MemoryStore(),
        fetchFn,
    });
    client.exchanges = exchanges;
    client.syncErrors = [];
    client.on(sdk.ClientEvent.Sync, (state, _previous, data) => {
        if (state === sdk.SyncState.Error) client.syncErrors.push(String(data?.error));
    });
    await client.initRustCrypto({ useIndexedDB: false });
    await client.startClient({ lazyLoadMembers: true, initialSyncLimit: 20 });
    await until(`${registered.user_id}'s first sync`, () => client.isInitialSyncComplete());
    return client;
}

/** The event in `room`'s live timeline that `matches`, once it is decrypted (or plain). */
function findEvent(room, matches) {
    return room
        ?.getLiveTimeline()
        .getEvents()
        .find((event) => !event.isBeingDecrypted() && matches(event));
}

/** Waits until `client` shows a text `body` in the room, from an encrypted event it decrypted. */
async function receiveEncrypted(client, roomId, body) {
    const event = await until(`${client.getUserId()} to decrypt ${JSON.stringify(body)}`, () =>
        findEvent(client.getRoom(roomId), (e) => e.getType() === "m.room.message" && e.getContent().body === body),
    );
    check(event.isEncrypted(), `${JSON.stringify(body)} arrived unencrypted`);
    check(!event.isDecryptionFailure(), `${JSON.stringify(body)} could not be decrypted`);
    return event;
}

const watchdog = setTimeout(() => {
    say("FAIL the whole run took more than 100 s");
    process.exit(1);
}, 100_000);
process.on("unhandledRejection", (error) => {
    say(`FAIL unhandled rejection: ${error?.stack ?? error}`);
    process.exit(1);
});

let alice;
let bob;
try {
    let aliceId;
    let bobId;
    await step("Alice registers on node A and Bob on node B (UIA, dummy stage)", async () => {
        const [a, b] = [await register(nodeA, "alice"), await register(nodeB, "bob")];
        [aliceId, bobId] = [a.user_id, b.user_id];
        check(aliceId.split(":")[1] !== bobId.split(":")[1], "Alice and Bob are on the same server");
        [alice, bob] = [await startClient(nodeA, a), await startClient(nodeB, b)];
    });

    await step("both sync with a filter that lazy-loads members", async () => {
        for (const client of [alice, bob]) {
            const uploaded = client.exchanges.find((x) => x.method === "POST" && x.pathname.endsWith("/filter"));
            check(uploaded?.status === 200, `${client.getUserId()} uploaded no filter: ${JSON.stringify(uploaded)}`);
            // The first sync carries the filter inline, the next ones name the uploaded one.
            const filters = () =>
                client.exchanges.filter((x) => x.pathname.endsWith("/sync")).map((x) => x.searchParams.get("filter"));
            const first = filters()[0];
            check(JSON.parse(first ?? "{}").room?.state?.lazy_load_members, `first sync's filter: ${first}`);
            const filterId = await until("a sync naming the uploaded filter", () => filters()[1]);
            // Read back from the server: what it stored is what it applies.
            const filter = await client.http.authedRequest(
                sdk.Method.Get,
                `/user/${encodeURIComponent(client.getUserId())}/filter/${encodeURIComponent(filterId)}`,
            );
            check(filter.room?.state?.lazy_load_members === true, `filter ${JSON.stringify(filter)}`);
        }
    });

    await step("Alice names herself", async () => {
        await alice.setDisplayName("Alice");
    });

    let roomId;
    await step("Alice creates an encrypted private room and invites Bob", async () => {
        ({ room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PrivateChat,
            name: "js-sdk room",
            invite: [bobId],
            initial_state: [
                { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
            ],
        }));
        await until("Alice's client to see the room as encrypted", () =>
            alice.getRoom(roomId)?.hasEncryptionStateEvent(),
        );
    });

    await step("Bob's client shows the invite from Alice", async () => {
        const room = await until("the invite in Bob's client", () => {
            const room = bob.getRoom(roomId);
            return room?.getMyMembership() === "invite" && room;
        });
        const invite = room.getMember(bobId)?.events.member;
        check(invite?.getSender() === aliceId, `invited by ${invite?.getSender()}`);
    });

    await step("Alice writes after the invite, before Bob joins", async () => {
        await alice.sendTextMessage(roomId, "before you joined");
    });

    await step("Bob joins across nodes", async () => {
        await bob.joinRoom(roomId);
        await until("Bob's client to show him joined", () => bob.getRoom(roomId)?.getMyMembership() === "join");
        await until("Alice's client to show Bob joined", () =>
            alice.getRoom(roomId)?.getMember(bobId)?.membership === "join",
        );
        check(bob.getRoom(roomId).hasEncryptionStateEvent(), "Bob's client does not see the room as encrypted");
    });

    await step("Alice and Bob exchange encrypted messages that each decrypts", async () => {
        await alice.sendTextMessage(roomId, "hello bob");
        const hello = await receiveEncrypted(bob, roomId, "hello bob");
        check(hello.getSender() === aliceId, `sent by ${hello.getSender()}`);
        await bob.sendTextMessage(roomId, "hi alice");
        const hi = await receiveEncrypted(alice, roomId, "hi alice");
        check(hi.getSender() === bobId, `sent by ${hi.getSender()}`);
    });

    await step("Bob pages back to the room's creation and reads the earlier message", async () => {
        const room = bob.getRoom(roomId);
        for (let page = 0; page < 20 && room.oldState.paginationToken !== null; page++) {
            await bob.scrollback(room, 20);
        }
        check(room.oldState.paginationToken === null, "never reached the start of the room");
        check(findEvent(room, (e) => e.getType() === "m.room.create"), "no m.room.create at the start");
        check(
            bob.exchanges.some((x) => x.pathname.endsWith("/messages") && x.status === 200),
            "scrollback never asked the server for /messages",
        );
        await receiveEncrypted(bob, roomId, "before you joined");
    });

    await step(
        "Alice renames herself and Bob's client sees a rename (unsigned.prev_content)",
        async () => {
            await alice.setDisplayName("Alice Liddell");
            const rename = await until("Alice's new member event in Bob's timeline", () =>
                findEvent(
                    bob.getRoom(roomId),
                    (e) =>
                        e.getType() === "m.room.member" &&
                        e.getStateKey() === aliceId &&
                        e.getContent().displayname === "Alice Liddell",
                ),
            );
            check(bob.getRoom(roomId).getMember(aliceId)?.name === "Alice Liddell", "member name not updated");
            const previous = rename.getPrevContent();
            check(
                previous.membership === "join" && previous.displayname === "Alice",
                `prev_content ${JSON.stringify(previous)}: Element would show "joined", not a rename`,
            );
        },
        { carryOn: true },
    );

    await step(
        "Bob reads Alice's profile from her server",
        async () => {
            const profile = await bob.getProfileInfo(aliceId);
            check(profile.displayname === "Alice Liddell", `profile ${JSON.stringify(profile)}`);
        },
        { carryOn: true },
    );

    await step("Bob leaves and his client keeps syncing without errors", async () => {
        await bob.leave(roomId);
        await until("Bob's client to show him gone", () => bob.getRoom(roomId)?.getMyMembership() === "leave");
        const leftAt = bob.exchanges.length;
        await alice.sendTextMessage(roomId, "after you left");
        // Something for Bob's next syncs to carry, twice: the second comes in a sync that
        // started after the leave.
        for (const round of [1, 2]) {
            await bob.setAccountData("io.hyphae.test.after_leave", { round });
            await until(`Bob's account data (round ${round}) to come back through sync`, () =>
                bob.getAccountData("io.hyphae.test.after_leave")?.getContent().round === round,
            );
        }
        const syncs = bob.exchanges.slice(leftAt).filter((x) => x.pathname.endsWith("/sync"));
        check(syncs.some((x) => x.status === 200), "no sync after leaving");
        check(syncs.every((x) => x.status === 200 || x.status === null), `failed syncs: ${JSON.stringify(syncs.filter((x) => x.status !== 200))}`);
        check(bob.syncErrors.length === 0, `sync errors: ${bob.syncErrors}`);
        check(bob.getSyncState() === sdk.SyncState.Syncing, `sync state ${bob.getSyncState()}`);
        check(
            !findEvent(bob.getRoom(roomId), (e) => e.getContent().body === "after you left"),
            "Bob still receives the room's messages after leaving",
        );
    });
} catch {
    // The failed step said why.
} finally {
    clearTimeout(watchdog);
    alice?.stopClient();
    bob?.stopClient();
}
say(failures.length === 0 ? "OK" : `FAILED: ${failures.join("; ")}`);
process.exit(failures.length === 0 ? 0 : 1);
