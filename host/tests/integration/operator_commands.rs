//! The operator commands' exit statuses and first messages, run as the built binary the way an
//! operator meets them (docs/operations.md: Commands, Operator commands, `fulfilld cursor`,
//! `fulfilld dead-letters`): 0 done, 1 refused, 2 could not run, with the store's state after.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fulfilld::store::CursorLease as _;

use crate::common::text;
use crate::journal::fulfilld_with;
use crate::pipeline::{Rig, ServeProcess, redis_url};

const DEFAULT_CHANNEL: &str = "/event/OrderProvisionRequested__e";

/// `fulfilld <args>` with nothing but `PATH` and `env` in its environment.
fn fulfilld_in(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one `fulfilld: …` line a command that could not run leaves on stderr.
fn error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("fulfilld: "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(output));
    lines[0].to_owned()
}

/// Exit 2, nothing on stdout, and the `fulfilld: …` line.
fn could_not_run(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    assert!(output.stdout.is_empty(), "{}", text(output));
    error_line(output)
}

/// `fulfilld test` with a component file that is not there cannot run: 2, naming the file.
#[test]
fn test_with_a_missing_component_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("fulfillment.wasm");
    let scenarios = crate::common::scenarios_dir();
    let output =
        crate::common::fulfilld(&["test".as_ref(), missing.as_os_str(), scenarios.as_os_str()]);
    let line = could_not_run(&output);
    assert_eq!(
        line,
        format!(
            "fulfilld: cannot read {}: No such file or directory (os error 2)",
            missing.display()
        ),
        "{}",
        text(&output)
    );
}

fn embedded(state: &Path) -> [(&'static str, &str); 1] {
    [("FULFILLD_STATE_DIR", state.to_str().unwrap())]
}

/// `dead-letters show` and `requeue` of an id the store does not hold: 2 ("no such dead
/// letter"), on the embedded store and on Redis; `list` on the same store says there are none.
#[test]
fn dead_letters_of_an_unknown_id_exit_2_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let embedded = embedded(&state);
    for verb in ["show", "requeue"] {
        let output = fulfilld_in(&embedded, &["dead-letters", verb, "7"]);
        assert_eq!(
            could_not_run(&output),
            format!("fulfilld: not found: dead letter \"7\" of channel {DEFAULT_CHANNEL}"),
            "{verb}"
        );
    }
    let output = fulfilld_in(&embedded, &["dead-letters", "list"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        stdout(&output),
        format!("0 dead letter(s) for {DEFAULT_CHANNEL}\n")
    );

    let namespace = format!("fulfilld-test-{}", &fulfilld::domain::random_uuid()[..8]);
    let url = redis_url();
    let on_redis = [
        ("REDIS_URL", url.as_str()),
        ("FULFILLD_REDIS_NAMESPACE", namespace.as_str()),
    ];
    for verb in ["show", "requeue"] {
        let output = fulfilld_in(&on_redis, &["dead-letters", verb, "1764382687000-0"]);
        assert_eq!(
            could_not_run(&output),
            format!("fulfilld: not found: dead letter 1764382687000-0 of {DEFAULT_CHANNEL}"),
            "{verb}"
        );
    }
}

/// `cursor reset`, `clear` and `backfill` on the embedded store (no `serve` running): each exits
/// 0, says what it did, and `cursor show` and the store then say the same.
#[tokio::test]
async fn cursor_reset_clear_and_backfill_write_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env = embedded(&state);
    let key = format!("sf:pe:replay:{DEFAULT_CHANNEL}");
    let done = |args: &[&str]| {
        let output = fulfilld_in(&env, args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
        stdout(&output)
    };

    assert_eq!(
        done(&["cursor", "reset", "42"]),
        format!(
            "{key}: none -> 42\nthe next subscription (after a restart or a lease change) \
             resumes after 42\n"
        )
    );
    assert_eq!(
        done(&["cursor", "show"]),
        format!(
            "channel:  {DEFAULT_CHANNEL}\ncursor:   42 ({key})\nbackfill: none\nleader:   none\n"
        )
    );
    assert_eq!(
        done(&["cursor", "clear"]),
        format!("{key}: removed; the next subscription starts per SF_EVENTS_REPLAY\n")
    );
    assert!(
        done(&["cursor", "show"]).contains(&format!("cursor:   none ({key})")),
        "the cursor is still there"
    );
    assert_eq!(
        done(&["cursor", "backfill"]),
        format!(
            "backfill requested for {DEFAULT_CHANNEL}: the next subscription starts from \
             EARLIEST once; events already enqueued are recognised by EventUuid and not run \
             again\n"
        )
    );
    assert!(
        done(&["cursor", "show"])
            .contains("backfill: pending (next subscription starts from EARLIEST)"),
        "no pending backfill"
    );
    // The store itself, opened as `serve` opens it.
    let store =
        fulfilld::store::embedded::EmbeddedStore::open(&state.join("fulfilld.redb")).unwrap();
    assert_eq!(store.cursor(DEFAULT_CHANNEL).await.unwrap(), None);
    assert!(store.backfill_requested(DEFAULT_CHANNEL).await.unwrap());
    drop(store);

    // A malformed replay id cannot run, and changes nothing.
    let output = fulfilld_in(&env, &["cursor", "reset", "abc"]);
    assert_eq!(
        could_not_run(&output),
        "fulfilld: \"abc\" is not a replay id (expected the decimal value of an 8-byte replay id)"
    );
    assert!(done(&["cursor", "show"]).contains(&format!("cursor:   none ({key})")));
}

/// While a `serve` replica holds the channel's lease, `cursor reset`, `clear` and `backfill`
/// are refused with exit 1 naming the replica, and change nothing; `--force` writes anyway
/// (`cursor show` and the store say so), and the leader's next cursor write undoes it, as the
/// refusal warns; once the replica stopped, the commands run without `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_writes_are_refused_naming_the_leading_replica_and_force_writes() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let channel = rig.channel.clone();
    let key = format!("sf:pe:replay:{channel}");
    // A lease that outlasts the pause below by far.
    let mut serve = ServeProcess::start(
        &rig,
        "replica-cursor",
        &[("FULFILLD_LEASE_TTL_MS", "120000")],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    let store = rig.store().await;
    // The leader stores the stream's position from every keepalive (each 500 ms here).
    let leader_position = rig.latest();
    crate::pipeline::wait_cursor(
        store.as_ref(),
        &channel,
        &leader_position,
        Duration::from_secs(30),
    )
    .await;
    // Paused, it still holds the lease but writes nothing: what the commands write stays until
    // it resumes.
    serve.signal("STOP");
    let run = |args: &[&str]| fulfilld_with(&rig, &[], args);

    let refusal = format!("refused: replica replica-cursor is reading {channel} (lease epoch ");
    let fix = "; its next cursor write would undo this. Stop the readers (or set \
               SF_EVENTS_ENABLED=false on them) and run it again, or pass --force.\n";
    for args in [
        &["cursor", "reset", "42"][..],
        &["cursor", "clear"],
        &["cursor", "backfill"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        let said = stdout(&output);
        assert!(
            said.starts_with(&refusal) && said.ends_with(fix) && said.lines().count() == 1,
            "{args:?}: {said}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stderr).contains("fulfilld: "),
            "{}",
            text(&output)
        );
    }
    assert_eq!(
        store.cursor(&channel).await.unwrap().as_ref(),
        Some(&leader_position)
    );
    assert!(!store.backfill_requested(&channel).await.unwrap());
    let shown = stdout(&run(&["cursor", "show"]));
    assert!(
        shown.contains(&format!("cursor:   {leader_position} ({key})"))
            && shown.contains("backfill: none")
            && shown.contains("leader:   replica-cursor (epoch "),
        "{shown}"
    );

    // --force: written while the replica still leads.
    let output = run(&["cursor", "reset", "42", "--force"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        stdout(&output),
        format!(
            "{key}: {leader_position} -> 42\nthe next subscription (after a restart or a lease \
             change) resumes after 42\n"
        )
    );
    let shown = stdout(&run(&["cursor", "show"]));
    assert!(
        shown.contains(&format!("cursor:   42 ({key})"))
            && shown.contains("leader:   replica-cursor (epoch "),
        "{shown}"
    );
    assert_eq!(
        store.cursor(&channel).await.unwrap().map(|c| c.to_string()),
        Some("42".to_owned())
    );
    // Resumed, the leader stores its own position over it.
    serve.signal("CONT");
    crate::pipeline::wait_cursor(
        store.as_ref(),
        &channel,
        &leader_position,
        Duration::from_secs(30),
    )
    .await;

    // The replica stops (releasing the lease): the commands run without --force.
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", serve.log_text());
    let shown = stdout(&run(&["cursor", "show"]));
    assert!(shown.contains("leader:   none"), "{shown}");
    let output = run(&["cursor", "clear"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        stdout(&output),
        format!("{key}: removed; the next subscription starts per SF_EVENTS_REPLAY\n")
    );
    assert_eq!(store.cursor(&channel).await.unwrap(), None);
    let output = run(&["cursor", "backfill"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        stdout(&output).starts_with(&format!(
            "backfill requested for {channel}: the next subscription starts from EARLIEST once"
        )),
        "{}",
        text(&output)
    );
    assert!(store.backfill_requested(&channel).await.unwrap());
    let shown = stdout(&run(&["cursor", "show"]));
    assert!(
        shown.contains(&format!("cursor:   none ({key})"))
            && shown.contains("backfill: pending (next subscription starts from EARLIEST)"),
        "{shown}"
    );
}

/// docs/operations.md, "Commands": every command exits 2 with one `fulfilld: …` line when the
/// store cannot be reached. Operator commands pointed at a Redis nobody listens on say
/// `REDIS_URL: cannot use the Redis store` and show no password.
#[test]
fn an_unreachable_redis_stops_operator_commands_naming_redis_url() {
    let port = crate::pipeline::free_port();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("SF_PROVISION_EVENT_CHANNEL", DEFAULT_CHANNEL),
    ];
    for args in [
        &["cursor", "show"][..],
        &["dead-letters", "list"][..],
        &["jobs", "list", "--state", "queued"][..],
    ] {
        let output = fulfilld_in(&env, args);
        let line = could_not_run(&output);
        assert!(
            line.starts_with("fulfilld: REDIS_URL: cannot use the Redis store"),
            "{args:?}: {line}"
        );
        assert!(
            !text(&output).contains("hunter2-secret"),
            "{}",
            text(&output)
        );
    }
}
