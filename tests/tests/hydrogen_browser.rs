//! Hydrogen, Element's lightweight web client, in headless Chromium (driven over WebDriver by
//! chromedriver) against a node in this process, chatting with matrix-nio on a second node:
//! Alice signs in to Hydrogen with her password, sees Bob's invite in the room list, accepts it,
//! reads Bob's message, answers, renames herself on the page, and sees Bob's rename in the
//! timeline. Bob is `tests/clients/nio_hydrogen_peer.py`. The page
//! (`tests/clients/hydrogen/`) is built by `scripts/test.sh` outside the clone (HYPHAE_HYDROGEN)
//! and served here from loopback. Screenshots go to $HYPHAE_ARTIFACTS, by default a folder
//! below the target dir that the test prints.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hyphae_tests::TestNode;
use hyphae_tests::browser::{
    Browser, StaticSite, artifacts_dir, browser_programs, start_chromedriver,
};
use hyphae_tests::program::ClientProgram;
use serde_json::json;

const TEST: &str = "hydrogen_in_chromium_chats_with_nio_across_two_nodes";
/// The name Bob gives the room (tests/clients/nio_hydrogen_peer.py).
const ROOM_NAME: &str = "Hydrogen and nio";
/// Each step's wait: the whole scenario stays well within two minutes.
const STEP: Duration = Duration::from_secs(30);

/// Waits until the open room's timeline holds a message `text` from `sender` (a display name),
/// sent (not still pending) when it is Alice's own.
async fn wait_message(browser: &Browser, sender: &str, text: &str) {
    browser
        .wait_for_within(
            STEP,
            &format!("the message {text:?} from {sender} in Hydrogen's timeline"),
            "const [sender, text] = arguments; \
             const body = (m) => [...(m.querySelector('.Timeline_messageBody')?.childNodes ?? [])] \
               .filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.textContent).join(''); \
             return [...document.querySelectorAll('.Timeline_message')].some((m) => \
               !m.classList.contains('unsent') && body(m) === text \
               && (m.classList.contains('own') \
                   || m.querySelector('.Timeline_messageSender')?.textContent === sender));",
            json!([sender, text]),
        )
        .await;
}

/// Waits until the timeline announces `announcement` (memberships, renames).
async fn wait_announcement(browser: &Browser, announcement: &str) {
    browser
        .wait_for_within(
            STEP,
            &format!("{announcement:?} in Hydrogen's timeline"),
            "return [...document.querySelectorAll('.Timeline .AnnouncementView')] \
               .some((a) => a.textContent === arguments[0]);",
            json!([announcement]),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrogen_in_chromium_chats_with_nio_across_two_nodes() {
    let Some((chromium, chromedriver)) = browser_programs(TEST) else {
        return;
    };
    let Some(page) = std::env::var_os("HYPHAE_HYDROGEN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    else {
        hyphae_tests::skip_or_fail(
            TEST,
            "HYPHAE_HYDROGEN is not set (scripts/test.sh builds the Hydrogen page and sets it)",
        );
        return;
    };
    let Some(python) = std::env::var_os("HYPHAE_NIO_PYTHON") else {
        hyphae_tests::skip_or_fail(
            TEST,
            "HYPHAE_NIO_PYTHON is not set (scripts/test.sh installs matrix-nio and sets it)",
        );
        return;
    };
    let artifacts = artifacts_dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hydrogen"));
    eprintln!("screenshots and logs: {}", artifacts.display());

    let (a, b) = (TestNode::start().await, TestNode::start().await);
    a.connect(&b).await;
    // Hydrogen signs in; it does not register. Alice's account is made beforehand.
    let alice = hyphae_tests::client::register(
        &reqwest::Client::new(),
        &a.client_url("/_matrix/client/v3"),
        "alice",
    )
    .await;
    let site = StaticSite::serve(page).await;

    let mut command = Command::new(python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/nio_hydrogen_peer.py"
        ))
        .arg(b.client_url(""))
        .arg(&alice.user_id);
    let mut bob = ClientProgram::start(
        "matrix-nio (Bob)",
        command,
        &artifacts.join("nio.stderr.log"),
    );
    let room = bob
        .wait_line("Bob's room", STEP, |line| line.starts_with("room "))
        .await;
    let room = room.trim_start_matches("room ").to_owned();

    let (_driver, driver) =
        start_chromedriver(&chromedriver, &artifacts.join("chromedriver.log")).await;
    let browser = Browser::open(&driver, &chromium, false, "hydrogen", &artifacts).await;
    let scenario = async {
        // Alice signs in with her password.
        browser
            .goto(&format!("{}/?hs={}", site.url, a.client_url("")))
            .await;
        browser
            .wait_for_within(
                STEP,
                "Hydrogen's sign-in form",
                "return !!document.querySelector('.PasswordLoginView button[type=submit]');",
                json!([]),
            )
            .await;
        browser.type_into("#username", "alice").await;
        browser
            .type_into("#password", hyphae_tests::client::PASSWORD)
            .await;
        browser
            .click(".PasswordLoginView button[type=submit]")
            .await;

        // Bob's invite is in her room list, by the room's name; she opens and accepts it.
        let in_list = format!(".RoomList a[href$=\"/open-room/{room}\"]");
        browser
            .wait_for_within(
                STEP,
                "Bob's invite in the room list",
                "const link = document.querySelector(arguments[0]); \
                 return link?.querySelector('.name')?.textContent === arguments[1];",
                json!([in_list, ROOM_NAME]),
            )
            .await;
        browser.screenshot("hydrogen-invite").await;
        browser.click(&in_list).await;
        browser
            .wait_for_within(
                STEP,
                "the invite from Bob",
                "return document.querySelector('.InviteView_inviter')?.textContent \
                   .includes('Bob') && document.querySelector('.InviteView h2, \
                   .InviteView .room-description')?.textContent.includes(arguments[0]);",
                json!([ROOM_NAME]),
            )
            .await;
        browser
            .click(".InviteView button.primary:not(.destructive)")
            .await;

        // In the room: Bob's message arrives from his node; Alice answers.
        browser
            .wait_for_within(
                STEP,
                "the room open with its composer",
                "return !!document.querySelector('.MessageComposer_input textarea');",
                json!([]),
            )
            .await;
        wait_message(&browser, "Bob", "hello from nio").await;
        browser
            .type_into(".MessageComposer_input textarea", "hello from hydrogen")
            .await;
        browser.click(".MessageComposer_input button.send").await;
        wait_message(&browser, "", "hello from hydrogen").await;
        bob.wait_line("Alice's message in nio", STEP, |l| {
            l == "received hello from hydrogen"
        })
        .await;
        browser
            .wait_for_within(
                STEP,
                "the room, joined, open in the room list",
                "const link = document.querySelector(arguments[0]); \
                 return link?.parentElement.classList.contains('active') \
                   && link.querySelector('.name').textContent === arguments[1];",
                json!([in_list, ROOM_NAME]),
            )
            .await;
        browser.screenshot("hydrogen-chat").await;

        // Alice renames herself on the page; Bob's nio sees it.
        browser.type_into("#display-name", "Alice Liddell").await;
        browser.click("#profile button[type=submit]").await;
        browser
            .wait_for_within(
                STEP,
                "the new name saved",
                "return document.getElementById('profile-status').dataset.state === 'saved';",
                json!([]),
            )
            .await;
        bob.wait_line("Alice's new name in nio", STEP, |l| {
            l == "saw alice renamed"
        })
        .await;

        // Bob renames himself; Hydrogen shows it as a rename (it needs the member event's
        // unsigned.prev_content to tell a rename from a join).
        bob.wait_line("Bob's rename", STEP, |l| l == "renamed")
            .await;
        assert!(bob.finish(STEP).await, "{}", bob.report());
        assert_eq!(
            bob.seen.last().map(String::as_str),
            Some("OK"),
            "{}",
            bob.report()
        );
        wait_announcement(&browser, "Bob changed their name to Bob Builder").await;
        browser.screenshot("hydrogen-rename").await;
    };
    if tokio::time::timeout(Duration::from_secs(150), scenario)
        .await
        .is_err()
    {
        browser.fail("the scenario took more than 150 s").await;
    }
    browser.close().await;
}
