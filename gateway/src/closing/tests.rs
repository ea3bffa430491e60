use super::{finish, hear_close, CLOSE_HANDSHAKE_WAIT, DISCARD_LIMIT};
use futures_util::{stream, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error, Message};

fn ok(m: Message) -> Result<Message, Error> {
    Ok(m)
}

/// After the gateway closed, the socket is read until the client's close frame (and no
/// further), or for at most `CLOSE_HANDSHAKE_WAIT` when it never comes.
#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_read_until_the_clients_close_or_the_wait_ends() {
    let until = Instant::now() + CLOSE_HANDSHAKE_WAIT;
    let mut answered = stream::iter([
        ok(Message::text("late")),
        ok(Message::text("later")),
        ok(Message::Close(None)),
        ok(Message::text("after the close")),
    ]);
    assert!(hear_close(&mut answered, until).await);
    let next = answered.next().await.map(|m| m.ok());
    assert_eq!(next, Some(Some(Message::text("after the close"))));

    let started = Instant::now();
    let mut silent = stream::iter([ok(Message::text("late"))]).chain(stream::pending());
    assert!(!hear_close(&mut silent, started + CLOSE_HANDSHAKE_WAIT).await);
    assert_eq!(started.elapsed(), CLOSE_HANDSHAKE_WAIT);
}

/// Where tungstenite stopped at an error, the socket is read raw, up to `DISCARD_LIMIT`
/// bytes; where the client's close came, it is not.
#[tokio::test(start_paused = true)]
async fn a_stream_ended_by_an_error_is_read_raw_up_to_the_limit() {
    let sent = vec![b'x'; 2 * DISCARD_LIMIT + 5];
    let mut raw = &sent[..];
    let refused = stream::iter([Err(Error::Utf8("refused".into()))]);
    finish(refused, Some(&mut raw)).await;
    assert_eq!(raw.len(), DISCARD_LIMIT + 5, "read exactly the limit");

    let mut raw = &sent[..];
    let closed = stream::iter([ok(Message::Close(None))]);
    finish(closed, Some(&mut raw)).await;
    assert_eq!(
        raw.len(),
        sent.len(),
        "nothing read past the client's close"
    );

    // A raw socket that never ends is read until the wait is over.
    let started = Instant::now();
    let (_client, mut quiet) = tokio::io::duplex(64);
    finish(stream::empty(), Some(&mut quiet)).await;
    assert_eq!(started.elapsed(), CLOSE_HANDSHAKE_WAIT);
}
