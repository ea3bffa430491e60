//! The router's and a route's pure parts: matching, normalising, targets, the cap.

use super::*;

fn route(prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
    RouteConfig {
        name: "r".into(),
        path_prefix: prefix.into(),
        upstream: upstream.into(),
        strip_prefix: strip,
        ..Default::default()
    }
}

#[test]
fn longest_prefix_on_segment_boundaries() {
    let mut a = route("/a", "up1:1", false);
    a.name = "a".into();
    let mut ab = route("/a/b", "up2:2", false);
    ab.name = "ab".into();
    let r = Router::new(&[a, ab]).expect("router");
    assert_eq!(
        r.find("/a/b/c").map(|x| x.cfg.name.clone()),
        Some("ab".into())
    );
    assert_eq!(
        r.find("/a/b").map(|x| x.cfg.name.clone()),
        Some("ab".into())
    );
    assert_eq!(r.find("/a/x").map(|x| x.cfg.name.clone()), Some("a".into()));
    assert_eq!(
        r.find("/ab").map(|x| x.cfg.name.clone()),
        None,
        "not a segment boundary"
    );
    assert!(r.find("/other").is_none());
}

#[test]
fn the_route_is_chosen_on_the_normalised_path() {
    let mut a = route("/a", "ws://up1:1/one", true);
    a.name = "a".into();
    let mut ab = route("/a/b", "ws://up2:2/two", true);
    ab.name = "ab".into();
    let r = Router::new(&[a, ab]).expect("router");
    let at = |raw: &str| {
        r.route(raw)
            .map(|x| (x.route.cfg.name.clone(), x.path.clone()))
    };
    // On the raw path all of these matched `/a` only, and went to its upstream.
    for raw in [
        "/a/x/../b/y",
        "/a//b/y",
        "/a/./b/y",
        "/a/%2e/b/y",
        "/a/x/%2E%2e/b/y",
    ] {
        assert_eq!(
            at(raw),
            Some(("ab".to_string(), Some("/a/b/y".to_string()))),
            "{raw}"
        );
    }
    let routed = r.route("/a/x/../b/y").expect("a route");
    let path = routed.path.as_deref().expect("inside");
    assert_eq!(routed.route.target(path, None).as_str(), "ws://up2:2/two/y");
    assert_eq!(
        at("/a/b/x/../y"),
        Some(("ab".into(), Some("/a/b/y".into())))
    );
    assert_eq!(
        at("/a/b/../y"),
        Some(("ab".into(), None)),
        "leaves /a/b: 400"
    );
    assert_eq!(at("/a/x/../y"), Some(("a".into(), Some("/a/y".into()))));
    assert_eq!(at("/a/../b"), Some(("a".into(), None)), "leaves /a: 400");
    assert_eq!(
        at("/a//b%2fy"),
        Some(("a".into(), None)),
        "encoded slash: 400"
    );
    assert_eq!(at("/other/../a/b"), None, "no route for the raw path: 404");
}

#[test]
fn paths_that_leave_the_route_are_refused() {
    let r = Router::new(&[route("/bots", "ws://127.0.0.1:19000/public", true)]).expect("router");
    let bots = r.find("/bots/x").expect("route");
    for bad in [
        "/bots/%2e%2e/%2e%2e/admin",
        "/bots/../admin",
        "/bots/%2E%2e/x",
        "/bots/a/../../admin",
        "/bots/..",
        "/bots/a%2fb",
        "/bots/a%5C..%5Cadmin",
        "/bots/a\\b",
    ] {
        assert_eq!(bots.normalize(bad), None, "{bad}");
    }
    for (ok, normal) in [
        ("/bots", "/bots"),
        ("/bots/", "/bots/"),
        ("/bots/x/./y", "/bots/x/y"),
        ("/bots/x/%2e%2e/y", "/bots/y"),
        ("/bots//x", "/bots/x"),
        ("/bots/a%2eb", "/bots/a%2eb"),
    ] {
        assert_eq!(bots.normalize(ok).as_deref(), Some(normal), "{ok}");
    }
    let path = bots.normalize("/bots/x/../y").expect("inside");
    assert_eq!(
        bots.target(&path, None).as_str(),
        "ws://127.0.0.1:19000/public/y"
    );
}

#[test]
fn user_ids_are_encoded_not_dropped() {
    assert_eq!(user_header("alice@example.com"), "alice@example.com");
    assert_eq!(user_header("a b%c"), "a%20b%25c");
    assert_eq!(user_header("zoë\r\nX-Evil: 1"), "zo%C3%AB%0D%0AX-Evil:%201");
}

#[test]
fn dials_in_progress_count_against_the_cap() {
    let mut cfg = route("/bots", "b:9", false);
    cfg.max_connections = 2;
    let r = Router::new(&[cfg]).expect("router");
    let bots = r.find("/bots").expect("route");
    let a = bots.reserve().expect("first");
    let _b = bots.reserve().expect("second");
    assert!(bots.reserve().is_none(), "at the cap");
    drop(a);
    assert!(bots.reserve().is_some(), "a slot came back");
}

#[test]
fn target_strips_prefix_and_credentials() {
    let strip = Router::new(&[route("/bots", "ws://b:9/base", true)]).expect("router");
    let r = strip.find("/bots/x").expect("route");
    assert_eq!(
        r.target("/bots/x", Some("token=t&user=u&room=7")).as_str(),
        "ws://b:9/base/x?room=7"
    );
    assert_eq!(r.target("/bots", None).as_str(), "ws://b:9/base/");
    let keep = Router::new(&[route("/bots", "b:9", false)]).expect("router");
    let r = keep.find("/bots/x").expect("route");
    assert_eq!(r.target("/bots/x", None).as_str(), "ws://b:9/bots/x");
}
