//! The hub: rooms, fan-out modes, presence batches.

use super::*;
use crate::outbound::{queue, OutboundReceiver};

#[test]
fn a_room_fans_out_direct_unless_its_fan_outs_would_keep_up_no_more() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut room = Room::default();
    assert!(room.direct(t0), "the first message");
    room.last_start = Some(t0);
    room.set_cost(ms(4));
    assert!(!room.direct(t0 + ms(4)), "busy 4 ms of every 4: batch");
    assert!(!room.direct(t0 + ms(5)), "4 of every 5 ms: batch");
    assert!(
        !room.direct(t0 + ms(7) + ms(9) / 10),
        "4 of every 7.9 ms: batch"
    );
    assert!(room.direct(t0 + ms(8)), "4 of every 8 ms: direct");
    assert!(room.direct(t0 + ms(20)), "apart: direct");
    // A cost beyond what the room keeps (~4.3 s) saturates rather than wraps.
    room.set_cost(Duration::from_secs(10));
    assert!(!room.direct(t0 + Duration::from_secs(5)), "still busy");
}

#[test]
fn one_slow_fan_out_does_not_make_a_quiet_room_busy() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut room = Room {
        last_start: Some(t0),
        ..Room::default()
    };
    // The room's first fan-out, on cold sockets, took 19 ms: it counts a quarter too.
    room.note_cost(ms(19));
    assert!(room.direct(t0 + ms(20)), "a slow first fan-out");
    // Messages 20 ms apart whose fan-outs take 6 ms, and one that took 17 (something
    // else had the core): the next message 20 ms on still goes direct.
    for _ in 0..16 {
        room.note_cost(ms(6));
    }
    room.note_cost(ms(17));
    assert!(
        room.direct(t0 + ms(20)),
        "one slow fan-out among quick ones"
    );
    // Fan-outs that stay that slow do make it busy.
    for _ in 0..16 {
        room.note_cost(ms(17));
    }
    assert!(!room.direct(t0 + ms(20)), "17 of every 20 ms: batch");
    // A cost beyond what the room keeps (~4.3 s) saturates rather than wraps.
    room.note_cost(Duration::MAX);
    room.note_cost(Duration::MAX);
    assert!(!room.direct(t0 + Duration::from_secs(1)), "still busy");
}

#[tokio::test]
async fn a_busy_room_probes_its_fan_out_once_every_so_many_wakes() {
    // An estimate left too high (an hour) by a slow moment, and messages that come
    // exactly as regularly as it says they must not: each waits for the window.
    let hub = Arc::new(Hub::new(Duration::ZERO, Duration::from_secs(3600)));
    let (q, mut rx) = queue(8, 1 << 20);
    hub.subscribe(&"r".into(), 1, q);
    hub.deliver(&msg(1));
    hub.set_direct_cost("r", Duration::from_secs(3600));
    let state = || {
        let shard = hub.shard("r");
        let room = shard.get("r").expect("the room");
        (room.wake_due, room.direct_ns)
    };
    let estimate = state().1;
    for seq in 2..2 + u64::from(PROBE_AFTER) {
        assert_eq!(hub.deliver(&msg(seq)), 1);
        assert!(state().0, "message {seq} waits for the room's wake");
        // The window ends (the wake task, without waiting for it); the writer writes.
        hub.wake_due(Instant::now() + Duration::from_secs(7200));
        while rx.try_recv_for_test().is_some() {}
    }
    // So many wakes on: the next message goes direct, and is measured.
    assert_eq!(hub.deliver(&msg(1000)), 1);
    let (waits, probed) = state();
    assert!(!waits, "the probe does not wait for a wake");
    assert!(probed < estimate, "the probe counts: {probed} ns");
    // One probe moves the estimate a quarter: the room batches again.
    assert_eq!(hub.deliver(&msg(1001)), 1);
    assert!(state().0, "busy again after the probe");
}

#[test]
fn a_room_and_its_name_fit_64_bytes() {
    // Every local user's inbox is one: the shard's table holds one per connection.
    let entry = std::mem::size_of::<(Arc<str>, Room)>();
    assert!(entry <= 64, "a room's entry is {entry} bytes");
}

#[test]
fn joiners_take_the_hubs_copy_of_a_rooms_name() {
    let hub = Hub::default();
    let first: Arc<str> = "r".into();
    let later: Arc<str> = "r".into();
    // No member yet: the joiner keeps its own.
    assert!(Arc::ptr_eq(&hub.shared_name(&first), &first));
    let (q, _r) = queue(8, 1024);
    hub.subscribe(&first, 1, q);
    assert!(Arc::ptr_eq(&hub.shared_name(&later), &first));
    hub.unsubscribe("r", 1);
    assert!(
        Arc::ptr_eq(&hub.shared_name(&later), &later),
        "the room is gone"
    );
}

#[test]
fn first_and_last_subscriber_are_reported() {
    let hub = Hub::default();
    let room: Arc<str> = "r".into();
    let (q1, _r1) = queue(8, 1024);
    let (q2, _r2) = queue(8, 1024);
    assert!(hub.subscribe(&room, 1, q1));
    assert!(!hub.subscribe(&room, 2, q2));
    assert!(!hub.unsubscribe("r", 1));
    assert!(!hub.unsubscribe("r", 1), "second unsubscribe is a no-op");
    assert!(hub.unsubscribe("r", 2));
    assert_eq!(hub.room_count(), 0);
}

#[test]
fn room_count_follows_rooms_with_local_subscribers() {
    let hub = Hub::default();
    let rooms: Vec<Arc<str>> = (0..40).map(|i| format!("r{i}").into()).collect();
    let mut keep = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for conn in [1, 2] {
            let (q, r) = queue(8, 1024);
            keep.push(r);
            hub.subscribe(room, conn + 10 * i as u64, q);
        }
    }
    assert_eq!(
        hub.room_count(),
        40,
        "a room counts once, whatever its members"
    );
    for (i, room) in rooms.iter().enumerate().take(20) {
        hub.unsubscribe(room, 1 + 10 * i as u64);
        hub.unsubscribe(room, 99); // never subscribed: changes nothing
    }
    assert_eq!(hub.room_count(), 40, "each still has a member");
    for (i, room) in rooms.iter().enumerate().take(20) {
        hub.unsubscribe(room, 2 + 10 * i as u64);
        hub.unsubscribe(room, 2 + 10 * i as u64); // again: already gone
    }
    assert_eq!(hub.room_count(), 20);
}

#[test]
fn deliver_shares_one_frame_and_skips_closed_subscribers() {
    let hub = Arc::new(Hub::default());
    let room: Arc<str> = "r".into();
    let (q1, mut r1) = queue(8, 1024);
    let (q2, _r2) = queue(8, 1024);
    hub.subscribe(&room, 1, q1);
    hub.subscribe(&room, 2, q2.clone());
    q2.close(crate::disconnect::SLOW_CONSUMER);
    let env = msg(1);
    assert_eq!(hub.deliver(&env), 1);
    drop(hub);
    let got = r1.try_recv_for_test().expect("queued");
    match got {
        Outbound::Msg(e) => assert!(Arc::ptr_eq(&e, &env)),
        other => panic!("unexpected {other:?}"),
    }
}

fn presence_frames(rx: &mut crate::outbound::OutboundReceiver) -> Vec<PresencePush> {
    std::iter::from_fn(|| rx.try_recv_for_test())
        .filter_map(|i| match i {
            Outbound::Frame(f) => PresencePush::parse(&f),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_full_presence_batch_goes_out_before_its_window_ends() {
    // A window no test waits for: only a full batch or a flush pushes anything.
    let hub = Arc::new(Hub::new(Duration::from_secs(5), Duration::ZERO));
    let room: Arc<str> = "r".into();
    let (q, mut rx) = queue(64, 1 << 20);
    hub.subscribe(&room, 1, q);
    for i in 0..crate::presence::MAX_USERS + 1 {
        hub.presence("r", &format!("u{i}"), true);
    }
    hub.presence("elsewhere", "x", true); // no member here: nothing kept
    let frames = presence_frames(&mut rx);
    assert_eq!(frames.len(), 1, "the full batch");
    assert_eq!(frames[0].joined.len(), crate::presence::MAX_USERS);
    hub.flush_presence();
    let frames = presence_frames(&mut rx);
    let last = format!("u{}", crate::presence::MAX_USERS);
    assert_eq!(frames, [PresencePush::new("r", vec![last], vec![])]);
    hub.flush_presence();
    assert!(presence_frames(&mut rx).is_empty(), "nothing left pending");
}

#[test]
fn without_a_window_each_change_is_its_own_frame() {
    let hub = Arc::new(Hub::default());
    let room: Arc<str> = "r".into();
    let (q, mut rx) = queue(8, 1024);
    hub.subscribe(&room, 1, q);
    hub.presence("r", "a", true);
    hub.presence("r", "a", false);
    assert_eq!(
        presence_frames(&mut rx),
        [
            PresencePush::change("r", "a", true),
            PresencePush::change("r", "a", false)
        ]
    );
}

fn msg(seq: u64) -> Arc<Envelope> {
    Envelope::for_test("r", seq, "{}".into())
}

fn seq_of(item: Option<Outbound>) -> Option<u64> {
    match item {
        Some(Outbound::Msg(e)) => Some(e.seq),
        _ => None,
    }
}

/// A hub whose room "r" is busy (its last direct fan-out took an hour) after one
/// message, which its member `rx` has taken.
async fn busy_room(window: Duration) -> (Arc<Hub>, OutboundQueue, OutboundReceiver) {
    let hub = Arc::new(Hub::new(Duration::ZERO, window));
    let (q, mut rx) = queue(64, 1 << 20);
    hub.subscribe(&"r".into(), 1, q.clone());
    assert_eq!(
        hub.deliver(&msg(1)),
        1,
        "the first message goes as it comes"
    );
    assert_eq!(seq_of(rx.recv_for_test().await), Some(1));
    hub.set_direct_cost("r", Duration::from_secs(3600));
    (hub, q, rx)
}

#[tokio::test]
async fn a_busy_rooms_messages_wake_its_writers_once_a_window_after_the_first() {
    let window = Duration::from_millis(300);
    let (hub, _q, mut rx) = busy_room(window).await;
    // The writer waits on its empty queue, as an idle one does.
    let writer = tokio::spawn(async move {
        let got = seq_of(rx.recv_for_test().await);
        (got, Instant::now(), rx)
    });
    tokio::task::yield_now().await;
    let first = Instant::now();
    assert_eq!(hub.deliver(&msg(2)), 1);
    assert_eq!(hub.deliver(&msg(3)), 1);
    let (got, woken, mut rx) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("woken")
        .expect("writer");
    // Not before the window: the writer never wakes early (a late one is the
    // machine's; nothing here bounds it).
    assert!(woken >= first + window, "woken {:?} after", woken - first);
    assert_eq!(got, Some(2));
    assert_eq!(
        seq_of(rx.try_recv_for_test()),
        Some(3),
        "the window's messages are all there for one write"
    );
    // The next busy message opens a new window. The wake task, idle since the first
    // wake, is woken by the listing: well before its idle poll would look again (a
    // bound eight windows wide, not a speed target).
    let writer = tokio::spawn(async move { seq_of(rx.recv_for_test().await) });
    tokio::task::yield_now().await;
    let again = Instant::now();
    assert_eq!(hub.deliver(&msg(4)), 1);
    let got = tokio::time::timeout(super::wakes::IDLE_POLL / 2, writer).await;
    assert_eq!(
        got.ok().and_then(Result::ok),
        Some(Some(4)),
        "woken by the listing"
    );
    assert!(Instant::now() >= again + window, "a window again");
}

#[tokio::test]
async fn without_a_window_a_busy_rooms_messages_wake_their_writers_at_once() {
    let (hub, _q, mut rx) = busy_room(Duration::ZERO).await;
    let writer = tokio::spawn(async move { seq_of(rx.recv_for_test().await) });
    tokio::task::yield_now().await;
    assert_eq!(hub.deliver(&msg(2)), 1);
    let got = tokio::time::timeout(Duration::from_secs(10), writer).await;
    assert_eq!(got.ok().and_then(Result::ok), Some(Some(2)));
}

#[tokio::test]
async fn a_member_leaving_a_room_that_waits_for_its_wake_is_woken_as_it_leaves() {
    // A window longer than the test: only the leave can wake the writer in time.
    let (hub, _q, mut rx) = busy_room(Duration::from_secs(1)).await;
    let (other, _other_rx) = queue(64, 1 << 20);
    hub.subscribe(&"r".into(), 2, other);
    let writer = tokio::spawn(async move { seq_of(rx.recv_for_test().await) });
    tokio::task::yield_now().await;
    assert_eq!(hub.deliver(&msg(2)), 2);
    assert!(!hub.unsubscribe("r", 1));
    let got = tokio::time::timeout(Duration::from_millis(900), writer).await;
    assert_eq!(got.ok().and_then(Result::ok), Some(Some(2)));
}
