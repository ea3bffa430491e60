//! What an idle connection weighs: the state of its two tasks, most of an idle
//! connection's memory (the idle rows of bench/summary.md). Every field such a task holds
//! across an await is paid by every connection for its whole life, so a timer, a second
//! copy of a function's arguments (an async fn keeps one) or a command's future that
//! slips into them shows here. Sizes are the compiler's layout, the same in every build
//! profile.
//!
//! The bounds are set by the allocator's size classes, not by a margin. tokio allocates a
//! task as one cell: about 104 bytes of its own (header, scheduler, id, trailer) around
//! the future, rounded up to 128 bytes. jemalloc's classes here are 512, 640, 768, 896,
//! 1,024 and 1,280 bytes: the socket loop's task must stay within 896 (its future within
//! ~792) and the writer's within 512 (~408). One byte over and every connection pays 128
//! bytes more.

use super::tests::Harness;
use crate::outbound;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The socket loop's future (session included), and the future of the task that runs it
/// after the upgrade (`server::connection_task`): 776 and 784 bytes with rustc 1.95. They
/// were 896 and 904, in the 1,024-byte class, until the session kept its id and resume
/// token as bytes rather than strings, its rooms in B-tree maps (24 bytes each, a hash
/// map 48), and made its presence name when needed; before that the task's was 984 (its
/// expiry timer inline, and the upgrade's state kept beside the loop's), in the
/// 1,280-byte class.
const SOCKET_LOOP_MAX: usize = 792;
/// The writer's future: 360 bytes with rustc 1.95 (472 while it held a future of the
/// closing token, in the 640-byte class).
const WRITER_MAX: usize = 400;

async fn socket() -> WebSocketStream<tokio::io::DuplexStream> {
    let (io, _peer) = tokio::io::duplex(64);
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

#[tokio::test]
async fn an_idle_connections_tasks_stay_small() {
    let h = Harness::fresh("u").await;
    let slots = crate::node::Slots {
        ip: h.node.take_ip_slot([127, 0, 0, 1].into()).expect("ip slot"),
        user: h.node.take_user_slot("u").expect("user slot"),
        registered: None,
    };
    let identity = h.session.identity.clone();
    let socket_loop = super::serve(
        h.node.clone(),
        socket().await,
        None,
        identity,
        slots,
        Default::default(),
    );
    let size = std::mem::size_of_val(&socket_loop);
    assert!(
        size <= SOCKET_LOOP_MAX,
        "the socket loop's future is {size} bytes"
    );

    // What is spawned for a connection: the upgrade, then the socket loop on the wire.
    let slots = crate::node::Slots {
        ip: h.node.take_ip_slot([127, 0, 0, 1].into()).expect("ip slot"),
        user: h.node.take_user_slot("u").expect("user slot"),
        registered: None,
    };
    let start = Box::new((h.session.identity.clone(), slots, Default::default()));
    let mut req = http::Request::new(());
    let task = crate::server::connection_task(hyper::upgrade::on(&mut req), h.node.clone(), start);
    let size = std::mem::size_of_val(&task);
    assert!(
        size <= SOCKET_LOOP_MAX,
        "a connection's task's future is {size} bytes"
    );

    let (sink, _stream) = futures_util::StreamExt::split(socket().await);
    let (_queue, rx) = outbound::queue(8, 1024);
    let settings = super::writer_settings(&h.node);
    let writer = outbound::run_writer(sink, rx, settings);
    let size = std::mem::size_of_val(&writer);
    assert!(size <= WRITER_MAX, "the writer's future is {size} bytes");
}

/// A room's local members share one copy of its name, the hub's (`Hub::shared_name`):
/// each member's tables hold a pointer to it, not an allocation of their own.
#[tokio::test]
async fn a_rooms_members_share_one_copy_of_its_name() {
    let mut a = Harness::new("a").await;
    let mut b = Harness::on(a.node.clone(), "b").await;
    for h in [&mut a, &mut b] {
        let fault = h
            .cmd(serde_json::json!({"type": "join", "id": 1, "room": "r"}))
            .await;
        assert!(!fault, "join");
    }
    let name = |h: &Harness| {
        let joined = h.session.rooms.keys().find(|r| &***r == "r").cloned();
        joined.expect("joined")
    };
    assert!(std::sync::Arc::ptr_eq(&name(&a), &name(&b)));
}
