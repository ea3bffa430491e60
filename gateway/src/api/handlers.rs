//! The server API's endpoints. Publishing goes through the same engine call as a client's
//! `send` (same seq/epoch, same `msg_id` idempotency, same fan-out to every node);
//! disconnect and unsubscribe reach every node through the control plane.

use super::{json, ApiError};
use crate::control::{self, Control};
use crate::engine::{HistoryQuery, Publish};
use crate::node::Node;
use crate::protocol::reply::{history_json, HistoryOk};
use crate::protocol::{self, command::nesting_depth, StreamPosition, MAX_BODY_DEPTH};
use crate::upgrade::Body;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Runs endpoint `name` (authenticated already).
pub(super) async fn handle(
    node: &Arc<Node>,
    name: &str,
    query: &str,
    body: &[u8],
    traceparent: Option<String>,
) -> Result<Response<Body>, ApiError> {
    match name {
        "publish" => publish(node, parse(body)?, traceparent).await,
        "broadcast" => broadcast(node, parse(body)?, traceparent).await,
        "disconnect" => disconnect(node, parse(body)?).await,
        "unsubscribe" => unsubscribe(node, parse(body)?).await,
        "presence" => presence(node, query).await,
        "rooms" => rooms(node, query).await,
        "nodes" => Ok(json(
            StatusCode::OK,
            &Nodes {
                nodes: node.engine.nodes().await?,
            },
        )),
        "history" => history(node, query).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            name.to_string(),
        )),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

/// A query parameter.
fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn number(query: &str, name: &str) -> Result<Option<u64>, ApiError> {
    param(query, name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad(format!("{name} must be a number")))
        })
        .transpose()
}

fn room_name(node: &Node, room: &str) -> Result<(), ApiError> {
    protocol::validate_room(room, node.config.limits.max_room_name).map_err(ApiError::bad)?;
    protocol::inbox_owner(room).map_err(ApiError::bad)?;
    Ok(())
}

/// A user id as tokens carry them (the authenticator's own rule): anything else names no
/// connection, and would travel to every node for nothing.
fn user_name(user: &str) -> Result<(), ApiError> {
    crate::auth::check_user(user)
        .map_err(|_| ApiError::bad("user must be 1..128 bytes without control characters"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    room: String,
    body: Box<RawValue>,
    #[serde(default)]
    msg_id: Option<String>,
    #[serde(default)]
    from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    rooms: Vec<String>,
    body: Box<RawValue>,
    #[serde(default)]
    msg_id: Option<String>,
    #[serde(default)]
    from: Option<String>,
}

/// Where a published message went.
#[derive(Serialize)]
struct Published {
    room: String,
    #[serde(flatten)]
    at: Option<StreamPosition>,
    msg_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// One room's outcome of a broadcast.
#[derive(Serialize)]
#[serde(untagged)]
enum BroadcastResult {
    Ok(Published),
    Failed {
        room: String,
        error: &'static str,
        message: String,
    },
}

/// Checks a message and publishes it to `room` like a client's `send`.
async fn publish_one(
    node: &Node,
    room: &str,
    from: &str,
    msg_id: &str,
    body: Box<RawValue>,
    traceparent: Option<String>,
) -> Result<Published, ApiError> {
    room_name(node, room)?;
    let copy = node.hooks.wants_messages().then(|| body.clone());
    let published = node
        .engine
        .publish(Publish {
            room: room.into(),
            from: from.to_string(),
            msg_id: msg_id.to_string(),
            body,
            traceparent,
        })
        .await?;
    if let Some(body) = copy {
        node.hooks
            .message_stored(room, from, msg_id, body, &published);
    }
    Ok(Published {
        room: room.to_string(),
        at: (!published.ephemeral).then_some(published.at),
        msg_id: msg_id.to_string(),
        duplicate: published.duplicate,
    })
}

/// The body, sender and message id of a publish, checked like a client's send.
fn message_parts(
    node: &Node,
    body: &RawValue,
    from: Option<String>,
    msg_id: Option<String>,
) -> Result<(String, String), ApiError> {
    if nesting_depth(body.get()) > MAX_BODY_DEPTH {
        return Err(ApiError::bad(format!(
            "body nested deeper than {MAX_BODY_DEPTH} levels"
        )));
    }
    if body.get().len() > node.config.limits.max_frame_bytes {
        // 413 as for a request too large to read: one error, one status.
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body larger than limits.maxFrameBytes",
        ));
    }
    let msg_id = match msg_id {
        Some(m) if m.is_empty() || m.len() > 128 => {
            return Err(ApiError::bad("msg_id must be 1..128 bytes"))
        }
        Some(m) => m,
        None => crate::connection::session::new_msg_id(),
    };
    let from = from.unwrap_or_else(|| node.config.api.default_sender.clone());
    if from.is_empty() || from.len() > crate::auth::MAX_USER_LEN {
        return Err(ApiError::bad("from must be 1..128 bytes"));
    }
    Ok((from, msg_id))
}

async fn publish(
    node: &Node,
    req: PublishRequest,
    traceparent: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let (from, msg_id) = message_parts(node, &req.body, req.from, req.msg_id)?;
    let out = publish_one(node, &req.room, &from, &msg_id, req.body, traceparent).await?;
    Ok(json(StatusCode::OK, &out))
}

async fn broadcast(
    node: &Node,
    req: BroadcastRequest,
    traceparent: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let max = node.config.api.max_broadcast_rooms;
    if req.rooms.is_empty() || req.rooms.len() > max {
        return Err(ApiError::bad(format!("rooms: 1 to {max} rooms")));
    }
    let (from, msg_id) = message_parts(node, &req.body, req.from, req.msg_id)?;
    let mut results = Vec::with_capacity(req.rooms.len());
    for room in &req.rooms {
        let body = req.body.clone();
        let one = publish_one(node, room, &from, &msg_id, body, traceparent.clone()).await;
        results.push(match one {
            Ok(p) => BroadcastResult::Ok(p),
            Err(e) => BroadcastResult::Failed {
                room: room.clone(),
                error: e.code,
                message: e.message,
            },
        });
    }
    #[derive(Serialize)]
    struct Results {
        results: Vec<BroadcastResult>,
    }
    Ok(json(StatusCode::OK, &Results { results }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: String,
    #[serde(default = "yes")]
    reconnect: bool,
    #[serde(default)]
    reason: String,
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

async fn disconnect(node: &Node, req: DisconnectRequest) -> Result<Response<Body>, ApiError> {
    user_name(&req.user)?;
    let msg = Control::Disconnect {
        user: req.user,
        reconnect: req.reconnect,
        reason: req.reason.chars().take(100).collect(),
    };
    control::send(node, &msg).await?;
    Ok(json(StatusCode::OK, &Done { ok: true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    user: String,
    room: String,
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> Result<Response<Body>, ApiError> {
    user_name(&req.user)?;
    room_name(node, &req.room)?;
    let msg = Control::Unsubscribe {
        user: req.user,
        room: req.room,
    };
    control::send(node, &msg).await?;
    Ok(json(StatusCode::OK, &Done { ok: true }))
}

/// A listing's `limit` query parameter: 1000 when absent, held to 1..=10,000. What a
/// listing costs the store grows with it (a room of 100,000 users listed whole took Redis
/// 50 ms, during which it served nothing else).
fn list_limit(query: &str) -> Result<usize, ApiError> {
    Ok(number(query, "limit")?.unwrap_or(1000).clamp(1, 10_000) as usize)
}

async fn presence(node: &Node, query: &str) -> Result<Response<Body>, ApiError> {
    let room = param(query, "room").ok_or_else(|| ApiError::bad("room is required"))?;
    room_name(node, &room)?;
    let present = node.engine.presence_upto(&room, list_limit(query)?).await?;
    #[derive(Serialize)]
    struct Presence {
        room: String,
        users: Vec<String>,
        count: usize,
    }
    Ok(json(
        StatusCode::OK,
        &Presence {
            room,
            users: present.users,
            count: present.count,
        },
    ))
}

async fn rooms(node: &Node, query: &str) -> Result<Response<Body>, ApiError> {
    let limit = list_limit(query)?;
    #[derive(Serialize)]
    struct Room {
        room: String,
        users: usize,
    }
    #[derive(Serialize)]
    struct Rooms {
        rooms: Vec<Room>,
    }
    let rooms = node
        .engine
        .active_rooms(limit)
        .await?
        .into_iter()
        .map(|(room, users)| Room { room, users })
        .collect();
    Ok(json(StatusCode::OK, &Rooms { rooms }))
}

#[derive(Serialize)]
struct Nodes {
    nodes: Vec<crate::engine::NodeReport>,
}

async fn history(node: &Node, query: &str) -> Result<Response<Body>, ApiError> {
    let room = param(query, "room").ok_or_else(|| ApiError::bad("room is required"))?;
    room_name(node, &room)?;
    let limit = number(query, "limit")?
        .map_or(50, |l| l as usize)
        .min(protocol::MAX_HISTORY_LIMIT);
    let asked = HistoryQuery {
        since: number(query, "since")?,
        before: number(query, "before")?,
        limit,
        max_bytes: node.config.limits.history_page_cap(),
    };
    let page = crate::engine::page(&*node.engine, &room, asked).await?;
    let reply = HistoryOk {
        room,
        epoch: page.epoch,
        top: page.top,
        first: page.first,
        more: page.more,
        messages: page.messages.iter().map(|m| m.frame.clone()).collect(),
    };
    let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(history_json(
        &reply,
    ))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
