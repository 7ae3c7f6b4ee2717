//! Crash safety: a child process commits in a loop and is killed with SIGKILL mid-stream; every
//! commit it reported must be in the file, and the file must be consistent.
//!
//! The child is this very test binary, re-run with `--exact crash_writer_child` and
//! `BERTH_STORE_CRASH_WRITER=<path>`; without that variable `crash_writer_child` does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use berth_store::{Compare, EmbeddedStore, Op, Store, Txn};

const ENV: &str = "BERTH_STORE_CRASH_WRITER";
const COUNTER: &str = "/crash/counter";
const MARKS: &str = "/crash/mark/";

fn parse(v: &[u8]) -> i64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// The writer: each transaction bumps the counter by CAS and adds a mark key, atomically; the
/// revision is printed only once `txn` has returned, i.e. once the commit is durable.
#[tokio::test]
async fn crash_writer_child() {
    let Ok(path) = std::env::var(ENV) else { return };
    let s = EmbeddedStore::open(path).await.unwrap();
    loop {
        let (rev, n) = match s.get(COUNTER).await.unwrap() {
            None => (0, 0),
            Some(kv) => (kv.mod_revision, parse(&kv.value)),
        };
        let r = s
            .txn(Txn {
                compares: vec![Compare::mod_revision(COUNTER, rev)],
                success: vec![
                    Op::put(COUNTER, (n + 1).to_string()),
                    Op::put(format!("{MARKS}{:08}", n + 1), "x"),
                ],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(r.succeeded, "single writer: CAS cannot fail");
        println!("committed {} {}", r.revision, n + 1);
    }
}

#[tokio::test]
async fn every_reported_commit_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().unwrap();
    let mut last_reported = 0;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args([
                "crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < 300 {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: writer exited early: {:?}", child.wait()))
                .unwrap();
            // libtest may print "test crash_writer_child ... " on the same line first.
            let Some((_, rest)) = line.split_once("committed ") else {
                continue;
            };
            let mut it = rest.split(' ').map(|x| x.parse::<i64>().unwrap());
            let (rev, n) = (it.next().unwrap(), it.next().unwrap());
            assert_eq!(rev, n, "one revision per increment");
            assert_eq!(rev, last_reported + 1, "reported commits are consecutive");
            last_reported = rev;
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush
        child.wait().unwrap();
        drop(lines);

        let s = EmbeddedStore::open(&path)
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopen after kill -9: {e}"));
        let revision = s.revision().await.unwrap();
        let counter = s.get(COUNTER).await.unwrap().unwrap();
        assert!(
            revision >= last_reported,
            "round {round}: commit {last_reported} was reported but the store is at {revision}"
        );
        // At most one commit can be durable but not yet printed (killed between the two), plus
        // whatever the pipe held unread.
        assert_eq!(
            parse(&counter.value),
            revision,
            "round {round}: counter matches revision"
        );
        assert_eq!(counter.mod_revision, revision);
        let marks = s.range(MARKS).await.unwrap();
        assert_eq!(
            marks.kvs.len() as i64,
            revision,
            "round {round}: atomic multi-key commits"
        );
        assert_eq!(
            marks.kvs.last().map(|kv| kv.key.clone()),
            Some(format!("{MARKS}{revision:08}"))
        );
        // The change log is whole too: a watch replays every revision.
        let mut w = s.watch(MARKS, revision - 50).await.unwrap();
        for expect in revision - 50..=revision {
            assert_eq!(w.recv().await.unwrap().unwrap().revision, expect);
        }
        last_reported = revision; // the next child continues from the stored state
        drop(s); // closes the file: the next child must be able to lock it
    }
}

const GROUP_ENV: &str = "BERTH_STORE_CRASH_GROUP_WRITER";
const WRITERS: usize = 16;

/// The concurrent writer: WRITERS tasks each put their own new key in a loop, so their
/// transactions share group commits; each prints `committed REV KEY` once `txn` has returned,
/// i.e. once the fsync that holds it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_group_writer_child() {
    let Ok(path) = std::env::var(GROUP_ENV) else {
        return;
    };
    let s = EmbeddedStore::open(path).await.unwrap();
    let start = s.revision().await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/group/{start:08}/{w:02}/{i:08}");
                    let rev = s.put(&key, b"x".to_vec()).await.unwrap();
                    println!("committed {rev} {key}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn every_reported_group_commit_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().unwrap();
    let mut reported: Vec<(i64, String)> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "crash_group_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(GROUP_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < 1_000 {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: writer exited early: {:?}", child.wait()))
                .unwrap();
            let Some((_, rest)) = line.split_once("committed ") else {
                continue;
            };
            let (rev, key) = rest.split_once(' ').unwrap();
            reported.push((rev.parse().unwrap(), key.to_owned()));
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL, mid-group most likely
        child.wait().unwrap();
        drop(lines);

        let s = EmbeddedStore::open(&path)
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopen after kill -9: {e}"));
        let revision = s.revision().await.unwrap();
        // Every answered transaction is there, at the revision it was told.
        for (rev, key) in &reported {
            let kv =
                s.get(key).await.unwrap().unwrap_or_else(|| {
                    panic!("round {round}: {key} (revision {rev}) was reported")
                });
            assert_eq!(kv.mod_revision, *rev, "round {round}: {key}");
            assert!(*rev <= revision, "round {round}: {rev} > store {revision}");
        }
        // State and revision agree: one new key per revision, revisions 1..=revision.
        let all = s.range("/group/").await.unwrap();
        assert_eq!(all.revision, revision);
        let mut revs: Vec<i64> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
        revs.sort_unstable();
        assert_eq!(revs, (1..=revision).collect::<Vec<_>>(), "round {round}");
        // And the log agrees with both.
        let from = (revision - 300).max(1);
        let mut w = s.watch("/group/", from).await.unwrap();
        for expect in from..=revision {
            let e = w.recv().await.unwrap().unwrap();
            assert_eq!(e.revision, expect, "round {round}");
            let kv = all.kvs.iter().find(|kv| kv.key == e.kv.key).unwrap();
            assert_eq!(kv.mod_revision, expect, "round {round}: {}", e.kv.key);
        }
        drop(s); // closes the file: the next child must be able to lock it
    }
}
