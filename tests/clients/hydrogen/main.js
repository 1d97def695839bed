// Hydrogen, Element's lightweight web client, as its own app starts itself (its root view model:
// sign-in, the room list, rooms, the timeline and the composer), against the homeserver named by
// `?hs=`. Around it, one form of this page's own sets the signed-in user's display name, which
// Hydrogen cannot do. The page is built by build.mjs with esbuild.
import { FeatureSet, Platform, createNavigation, createRouter, RootViewModel } from "hydrogen-view-sdk";

const homeserver = new URLSearchParams(location.search).get("hs");

const assetPaths = {
    downloadSandbox: "assets/download-sandbox.html",
    worker: "assets/main.js",
    olm: {
        wasm: "olm/olm.wasm",
        legacyBundle: "olm/olm_legacy.js",
        wasmBundle: "olm/olm.js",
    },
    // Hydrogen needs its service worker: it hands it the access token for authenticated media.
    serviceWorker: "sw.js",
};

async function main() {
    const platform = new Platform({
        container: document.getElementById("app"),
        assetPaths,
        config: { defaultHomeServer: homeserver },
        options: { development: true },
    });
    const navigation = createNavigation();
    platform.setNavigation(navigation);
    await platform.init();
    const urlRouter = createRouter({ navigation, history: platform.history });
    urlRouter.attach();
    const features = await FeatureSet.load(platform.settingsStorage);
    const root = new RootViewModel({ platform, urlRouter, navigation, features });
    await root.load();
    platform.createAndMountRootView(root);
    watchSession(platform);
    document.body.dataset.ready = "true";
}

/** Shows the display-name form once a session is signed in; saves with its access token. */
function watchSession(platform) {
    const signedIn = async () => (await platform.sessionInfoStorage.getAll())[0];
    const poll = setInterval(async () => {
        if (await signedIn()) {
            document.body.dataset.session = "ready";
            clearInterval(poll);
        }
    }, 200);
    document.getElementById("profile").addEventListener("submit", async (event) => {
        event.preventDefault();
        const status = document.getElementById("profile-status");
        const session = await signedIn();
        const displayname = document.getElementById("display-name").value;
        status.textContent = "saving…";
        const response = await fetch(
            `${session.homeserver}/_matrix/client/v3/profile/${encodeURIComponent(session.userId)}/displayname`,
            {
                method: "PUT",
                headers: { Authorization: `Bearer ${session.accessToken}`, "Content-Type": "application/json" },
                body: JSON.stringify({ displayname }),
            },
        );
        status.textContent = response.ok ? "saved" : `failed: ${response.status}`;
        status.dataset.state = response.ok ? "saved" : "failed";
    });
}

main().catch((error) => {
    document.body.dataset.error = String(error?.stack ?? error);
    throw error;
});
