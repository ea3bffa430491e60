"""Flow: chat through the Service from the node. Clients on different pods (the Redis
engine makes them one chat service) exchange room messages and direct messages, and an
offline user's direct message waits for them on the other pod."""
from __future__ import annotations

from gateway import command, next_msg, redis_gateway

FLOW = "chat through the Service"


def test_rooms_and_direct_messages_across_pods(namespace, cluster):
    gw = redis_gateway(namespace, cluster, FLOW)
    a, b = gw.ready_names(2)
    alice, bob = gw.connect_on("alice", a), gw.connect_on("bob", b)
    for ws in (alice, bob):
        r = command(ws, {"type": "join", "id": 1, "room": "lobby"})
        assert r["type"] == "ok", r

    ok = command(alice, {"type": "send", "id": 2, "room": "lobby", "msg_id": "hi-1", "body": {"text": "hi"}})
    assert ok["type"] == "ok", ok
    got = next_msg(bob, "lobby")
    assert (got["room"], got["seq"], got["from"], got["body"]) == ("lobby", ok["seq"], "alice", {"text": "hi"}), \
        f"[{FLOW}] bob on {b} got {got} for alice's message on {a}"

    ok = command(bob, {"type": "send", "id": 3, "room": "user:alice", "body": "psst"})
    assert ok["type"] == "ok", ok
    dm = next_msg(alice, "user:alice")
    assert (dm["room"], dm["from"], dm["body"]) == ("user:alice", "bob", "psst"), dm

    # A direct message to a user who is not connected is kept and delivered when they
    # connect, on a pod other than the sender's.
    ok = command(alice, {"type": "send", "id": 4, "room": "user:carol", "body": "later"})
    assert ok["type"] == "ok", ok
    carol = gw.connect_on("carol", b)
    dm = next_msg(carol, "user:carol")
    assert (dm["room"], dm["from"], dm["body"], dm["seq"]) == ("user:carol", "alice", "later", ok["seq"]), dm
    for ws in (alice, bob, carol):
        ws.close()
