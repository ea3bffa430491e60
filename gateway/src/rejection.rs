//! Why the gateway refuses a WebSocket upgrade: every reason, with the HTTP status the
//! client gets, in one place (the chat endpoint, forwarding routes and the connect hook
//! all refuse through [`upgrade::reject`](crate::upgrade::reject)). The reason is the
//! `reason` label of `chatgateway_upgrades_rejected_total`, so the label has exactly these
//! values; docs/operations.md lists them.

use http::StatusCode;

/// A refused upgrade's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not an upgrade the gateway speaks: headers, version 13, HTTP/1.1, the subprotocol.
    BadUpgrade,
    /// No token (or, in insecure mode, no `?user=`).
    AuthMissing,
    /// A token that does not verify.
    AuthInvalid,
    /// A browser `Origin` outside `server.allowedOrigins`.
    Origin,
    /// `limits.connectionsPerIp` open connections from the address.
    PerIp,
    /// `limits.connectionsPerUser` open connections of the user on this pod.
    PerUser,
    /// Over `admission.perIpRate`.
    PerIpRate,
    /// Over `admission.perUserRate`.
    PerUserRate,
    /// Over `admission.rate`.
    Admission,
    /// The pod drains and its accept grace is over.
    ShuttingDown,
    /// The backend's connect hook said no.
    HookRefused,
    /// The connect hook did not answer and its policy is to refuse.
    HookUnavailable,
    /// A forwarding route's path that leaves the route's prefix.
    BadPath,
    /// A forwarding route at its `maxConnections`.
    RouteLimit,
    /// A forwarding route's upstream URL that cannot be dialled.
    UpstreamUrl,
    /// A forwarding route's upstream that did not accept the connection.
    UpstreamDown,
}

impl Rejection {
    /// Every reason (a new one goes here too: the docs test reads this list).
    pub const ALL: [Rejection; 16] = [
        Rejection::BadUpgrade,
        Rejection::AuthMissing,
        Rejection::AuthInvalid,
        Rejection::Origin,
        Rejection::PerIp,
        Rejection::PerUser,
        Rejection::PerIpRate,
        Rejection::PerUserRate,
        Rejection::Admission,
        Rejection::ShuttingDown,
        Rejection::HookRefused,
        Rejection::HookUnavailable,
        Rejection::BadPath,
        Rejection::RouteLimit,
        Rejection::UpstreamUrl,
        Rejection::UpstreamDown,
    ];

    /// The metrics label and span outcome.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadUpgrade => "bad_upgrade",
            Rejection::AuthMissing => "auth_missing",
            Rejection::AuthInvalid => "auth_invalid",
            Rejection::Origin => "origin",
            Rejection::PerIp => "per_ip",
            Rejection::PerUser => "per_user",
            Rejection::PerIpRate => "per_ip_rate",
            Rejection::PerUserRate => "per_user_rate",
            Rejection::Admission => "admission",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::HookRefused => "hook_refused",
            Rejection::HookUnavailable => "hook_unavailable",
            Rejection::BadPath => "bad_path",
            Rejection::RouteLimit => "route_limit",
            Rejection::UpstreamUrl => "upstream_url",
            Rejection::UpstreamDown => "upstream_down",
        }
    }

    /// The response's status. A 401 carries `WWW-Authenticate: Bearer`, a 503 a jittered
    /// `Retry-After` (`upgrade::reject`).
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::BadUpgrade | Rejection::BadPath => StatusCode::BAD_REQUEST,
            Rejection::AuthMissing | Rejection::AuthInvalid => StatusCode::UNAUTHORIZED,
            Rejection::Origin | Rejection::HookRefused => StatusCode::FORBIDDEN,
            Rejection::PerIp
            | Rejection::PerUser
            | Rejection::PerIpRate
            | Rejection::PerUserRate => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Admission
            | Rejection::ShuttingDown
            | Rejection::HookUnavailable
            | Rejection::RouteLimit => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamUrl | Rejection::UpstreamDown => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/operations.md's row for `chatgateway_upgrades_rejected_total` names every
    /// reason with its status, and no other: `` `a`, `b` (429) `` gives both 429.
    #[test]
    fn every_rejection_is_the_one_documented() {
        let row = crate::doc_tables::row(
            crate::doc_tables::OPERATIONS,
            "`chatgateway_upgrades_rejected_total{reason}`",
        );
        let meaning = row.split(" | ").nth(2).expect("a meaning cell");
        // The cell's reasons in order, each with the status of the next parenthesis.
        let mut documented = Vec::new();
        let mut waiting = Vec::new();
        for (i, part) in meaning.split('`').enumerate() {
            if i % 2 == 1 {
                let is_reason = part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if is_reason {
                    waiting.push(part.to_string());
                }
            } else if let Some(status) = part
                .split('(')
                .nth(1)
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse::<u16>().ok())
            {
                documented.extend(waiting.drain(..).map(|r| (r, status)));
            }
        }
        assert!(waiting.is_empty(), "reasons without a status: {waiting:?}");
        let mut actual: Vec<(String, u16)> = Rejection::ALL
            .iter()
            .map(|r| (r.reason().to_string(), r.status().as_u16()))
            .collect();
        actual.sort();
        documented.sort();
        assert_eq!(documented, actual);
    }
}
