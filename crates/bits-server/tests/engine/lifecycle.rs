//! Session timeouts and tombstones (spec §18 items 49–50), with time moved by the test.

use std::time::Duration;

use crate::harness::{pattern, Harness};

const URL: &str = "/upload/a.bin";
/// BG_E_SESSION_NOT_FOUND.
const SESSION_NOT_FOUND: &str = "0x8020001F";
const TIMEOUT_VDIR: &str = "session_timeout = \"2s\"";

#[tokio::test]
async fn item_49_expired_session_is_refused_even_before_cleanup_runs() {
    let h = Harness::start("", TIMEOUT_VDIR).await;
    let data = pattern(300, 49);
    let sid = h.create(URL).await;
    let r = h.fragment(URL, &sid, 0, &data[..100], 300).await;
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(100));
    h.clock.advance(Duration::from_millis(2_100));
    h.fragment(URL, &sid, 100, &data[100..200], 300)
        .await
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    assert!(h.files_in_root().is_empty(), "{:?}", h.files_in_root());
    // The client starts over (spec §10.4): the expired session holds no reservation.
    let again = h.create(URL).await;
    h.fragment(URL, &again, 0, &data, 300)
        .await
        .assert_ack(200, None);
    assert_eq!(std::fs::read(h.upload_path("a.bin")).unwrap(), data);
}

#[tokio::test]
async fn item_49_a_cleanup_pass_expires_exactly_the_idle_sessions() {
    let h = Harness::start("", TIMEOUT_VDIR).await;
    let idle = h.create("/upload/idle.bin").await;
    h.fragment("/upload/idle.bin", &idle, 0, b"abc", 10)
        .await
        .assert_ack(200, None);
    h.clock.advance(Duration::from_millis(1_500));
    let busy = h.create("/upload/busy.bin").await;
    h.clock.advance(Duration::from_millis(1_000));
    // 2.5 s since the first session's last request, 1 s since the second's.
    let report = h.engine.sweep().await.expect("sweep");
    assert_eq!(report.expired, 1);
    assert_eq!(h.engine.open_sessions(), 1);
    h.fragment("/upload/idle.bin", &idle, 3, b"defghij", 10)
        .await
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    h.fragment("/upload/busy.bin", &busy, 0, b"0123456789", 10)
        .await
        .assert_ack(200, None);
}

#[tokio::test]
async fn item_50_regular_fragments_keep_session_alive() {
    let h = Harness::start("", TIMEOUT_VDIR).await;
    let data = pattern(700, 50);
    let sid = h.create(URL).await;
    // Seven fragments a second apart: 6 s in all, three times the session timeout.
    for i in 0..7u64 {
        if i > 0 {
            h.clock.advance(Duration::from_secs(1));
        }
        let off = i * 100;
        let r = h
            .fragment(URL, &sid, off, &data[off as usize..off as usize + 100], 700)
            .await;
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(off + 100));
        assert_eq!(h.engine.sweep().await.expect("sweep").expired, 0);
    }
    h.close(URL, &sid).await.assert_ack(200, None);
    assert_eq!(std::fs::read(h.upload_path("a.bin")).unwrap(), data);
}

#[tokio::test]
async fn tombstones_answer_repeats_until_their_lifetime_ends() {
    let h = Harness::start("tombstone_ttl = \"1m\"", "").await;
    let sid = h.create(URL).await;
    h.fragment(URL, &sid, 0, b"done", 4)
        .await
        .assert_ack(200, None);
    h.close(URL, &sid).await.assert_ack(200, None);
    assert_eq!(h.engine.tombstones(), 1);
    // A repeated Close whose first Ack was lost is answered as the first time.
    h.clock.advance(Duration::from_secs(59));
    assert_eq!(h.engine.sweep().await.expect("sweep").tombstones_removed, 0);
    h.close(URL, &sid).await.assert_ack(200, None);
    // Past the lifetime the tombstone is forgotten, and so is the session.
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(h.engine.sweep().await.expect("sweep").tombstones_removed, 1);
    assert_eq!(h.engine.tombstones(), 0);
    h.close(URL, &sid)
        .await
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    assert_eq!(std::fs::read(h.upload_path("a.bin")).unwrap(), b"done");
}

/// Issue 27: a wall clock stepped 25 minutes ahead of a 10-minute timeout (or an hour back and
/// forth) while a client is uploading loses no acknowledged byte: idle time is also measured
/// on the monotonic clock for sessions this process saw used. Real idleness still expires.
#[tokio::test]
async fn a_stepped_wall_clock_never_expires_a_busy_session() {
    const MIN: i64 = 60_000;
    let h = Harness::start("", "session_timeout = \"10m\"").await;
    let data = pattern(600, 27);
    let sid = h.create(URL).await;
    let mut at = 0u64;
    async fn next(h: &Harness, sid: &str, data: &[u8], at: &mut u64) {
        let off = *at;
        let r = h
            .fragment(URL, sid, off, &data[off as usize..off as usize + 100], 600)
            .await;
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(off + 100));
        *at += 100;
    }
    macro_rules! send {
        () => {
            next(&h, &sid, &data, &mut at).await
        };
    }
    send!();
    h.clock.advance(Duration::from_millis(200));
    // Stepped 25 minutes ahead: the next fragment and a sweep find the session busy.
    h.clock.step_wall(25 * MIN);
    send!();
    assert_eq!(h.engine.sweep().await.expect("sweep").expired, 0);
    // An hour back, a fragment stamped then, and forward again.
    h.clock.step_wall(-60 * MIN);
    h.clock.advance(Duration::from_millis(200));
    send!();
    h.clock.step_wall(60 * MIN);
    assert_eq!(h.engine.sweep().await.expect("sweep").expired, 0);
    send!();
    // 15 days ahead (the default timeout is 14): still busy.
    h.clock.step_wall(15 * 24 * 60 * MIN);
    send!();
    send!();
    assert_eq!(h.engine.sweep().await.expect("sweep").expired, 0);
    h.close(URL, &sid).await.assert_ack(200, None);
    assert_eq!(std::fs::read(h.upload_path("a.bin")).unwrap(), data);

    // Eleven minutes of real idleness: expired, as before.
    let idle = h.create("/upload/idle.bin").await;
    h.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(h.engine.sweep().await.expect("sweep").expired, 1);
    h.fragment("/upload/idle.bin", &idle, 0, b"x", 1)
        .await
        .assert_ack(500, Some(SESSION_NOT_FOUND));
}
