"""The core with the Redis codec (sans-IO): clients share upstream connections, replies are
matched in send order per connection and reach each client in its own request order, the
codec's preamble goes first on a new connection and its reply never reaches a client."""

from metamesh.codecs.redis.resp import encode_command
from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from tests.proxy.harness import Harness


def cmd(*args: str) -> bytes:
    return encode_command([a.encode() for a in args])


def mesh(password: str = "", upstream_password: str = "") -> Snapshot:
    options = (("auth_password", password),) if password else ()
    listener = Listener("l", "127.0.0.1", 0, "redis", "rc", stat_prefix="r", codec_options=options)
    up_opts = (("auth_password", upstream_password),) if upstream_password else ()
    clusters = [
        Cluster("a", (Endpoint("127.0.0.1", 7001),), protocol_options=up_opts),
        Cluster("b", (Endpoint("127.0.0.1", 7002),)),
    ]
    routes = (
        Route("a", (MetadataMatcher("key", MatchKind.PREFIX, "a:"),), RouteAction(cluster="a")),
        Route("b", (), RouteAction(cluster="b")),
    )
    return Snapshot.build([listener], clusters, [RouteConfiguration("rc", routes)])


def test_two_clients_share_one_upstream_connection_in_order() -> None:
    h = Harness(mesh())
    c1, c2 = h.client(), h.client()
    h.send(c1, cmd("GET", "a:1"))
    h.send(c2, cmd("GET", "a:2"))
    assert len(h.connects) == 1
    (up,) = h.connects
    h.connect(up)
    assert bytes(h.sent.pop(up)) == cmd("GET", "a:1") + cmd("GET", "a:2")
    h.respond(up, b"$2\r\nv1\r\n$2\r\nv2\r\n")
    assert bytes(h.sent.pop(c1)) == b"$2\r\nv1\r\n"
    assert bytes(h.sent.pop(c2)) == b"$2\r\nv2\r\n"


def test_one_client_across_routes_gets_replies_in_request_order() -> None:
    h = Harness(mesh())
    c = h.client()
    h.send(c, cmd("GET", "a:1") + cmd("GET", "other") + cmd("CLIENT", "GETNAME"))
    up_a, up_b = h.connects
    h.connect(up_a)
    h.connect(up_b)
    h.respond(up_b, b"+second\r\n")  # the later request's reply arrives first
    assert c not in h.sent
    h.respond(up_a, b"+first\r\n")
    assert bytes(h.sent.pop(c)) == b"+first\r\n+second\r\n$-1\r\n"


def test_preamble_goes_first_and_its_reply_is_swallowed() -> None:
    h = Harness(mesh(upstream_password="up-pw"))
    c = h.client()
    h.send(c, cmd("SET", "a:k", "v"))
    (up,) = h.connects
    h.connect(up)
    assert bytes(h.sent.pop(up)) == cmd("AUTH", "up-pw") + cmd("SET", "a:k", "v")
    h.respond(up, b"+OK\r\n")
    assert c not in h.sent
    h.respond(up, b"+OK\r\n")
    assert bytes(h.sent.pop(c)) == b"+OK\r\n"


def test_refused_upstream_auth_answers_the_client_with_an_error() -> None:
    h = Harness(mesh(upstream_password="wrong"))
    c = h.client()
    h.send(c, cmd("GET", "a:k"))
    (up,) = h.connects
    h.connect(up)
    h.respond(up, b"-WRONGPASS invalid username-password pair\r\n")
    reply = bytes(h.sent.pop(c))
    assert reply.startswith(b"-ERR upstream failure: ") and b"WRONGPASS" in reply


def test_selected_databases_get_their_own_connections() -> None:
    h = Harness(mesh())
    c0, c2 = h.client(), h.client()
    h.send(c2, cmd("SELECT", "2"))
    assert bytes(h.sent.pop(c2)) == b"+OK\r\n"
    h.send(c0, cmd("GET", "a:1"))
    h.send(c2, cmd("GET", "a:1"))
    up0, up2 = h.connects
    h.connect(up0)
    h.connect(up2)
    assert bytes(h.sent.pop(up0)) == cmd("GET", "a:1")
    assert bytes(h.sent.pop(up2)) == cmd("SELECT", "2") + cmd("GET", "a:1")


def test_downstream_auth_and_refused_commands_never_reach_an_upstream() -> None:
    h = Harness(mesh(password="pw"))
    c = h.client()
    h.send(c, cmd("GET", "a:1") + cmd("AUTH", "pw") + cmd("MULTI"))
    assert not h.connects
    out = bytes(h.sent.pop(c))
    assert out.startswith(b"-NOAUTH Authentication required.\r\n+OK\r\n-ERR MULTI is not")


def test_client_leaving_with_a_request_in_flight_keeps_the_shared_connection_in_step() -> None:
    h = Harness(mesh())
    c1, c2 = h.client(), h.client()
    h.send(c1, cmd("GET", "a:1"))
    h.send(c2, cmd("GET", "a:2"))
    (up,) = h.connects
    h.connect(up)
    h.core.downstream_closed(c1, h.now)
    h.flush()
    h.respond(up, b"+for-c1\r\n+for-c2\r\n")
    assert bytes(h.sent.pop(c2)) == b"+for-c2\r\n"
    assert c1 not in h.sent


def cluster_mesh() -> Snapshot:
    listener = Listener(
        "l", "127.0.0.1", 0, "redis", "rc", stat_prefix="r", codec_options=(("mode", "CLUSTER"),)
    )
    nodes = (Endpoint("127.0.0.1", 7001), Endpoint("127.0.0.1", 7002))
    cluster = Cluster("c", nodes, protocol_options=(("mode", "CLUSTER"),))
    route = Route("all", (), RouteAction(cluster="c", hash_policy=("slot",)))
    return Snapshot.build([listener], [cluster], [RouteConfiguration("rc", (route,))])


def test_cluster_mode_follows_moved_remembers_it_and_follows_ask_once() -> None:
    from metamesh.codecs.redis.cluster import key_slot

    slot = key_slot(b"k")
    h = Harness(cluster_mesh())
    c = h.client()
    h.send(c, cmd("GET", "k"))
    (a,) = h.connects
    h.connect(a)
    assert bytes(h.sent.pop(a)) == cmd("CLUSTER", "SLOTS") + cmd("GET", "k")
    b_port = 7002 if a.endpoint.port == 7001 else 7001
    h.respond(a, b"*0\r\n")  # an empty slot table: nothing known yet
    h.respond(a, b"-MOVED %d 127.0.0.1:%d\r\n" % (slot, b_port))
    (b,) = [u for u in h.connects if u is not a]
    assert b.endpoint.port == b_port
    h.connect(b)
    assert bytes(h.sent.pop(b)) == cmd("CLUSTER", "SLOTS") + cmd("GET", "k")
    h.respond(b, b"-ERR cluster support disabled\r\n")  # a failed CLUSTER SLOTS is skipped
    h.respond(b, b"$1\r\nv\r\n")
    assert bytes(h.sent.pop(c)) == b"$1\r\nv\r\n"  # the MOVED never reached the client
    assert h.core.stats.redirects == 1
    # a MOVED says the table changed: it is asked for again with the next reply, and what
    # the answer says (here: nothing) never reaches a client
    assert bytes(h.sent.pop(b)) == cmd("CLUSTER", "SLOTS")
    h.respond(b, b"*0\r\n")
    assert c not in h.sent
    # the slot is remembered: the next GET k goes to its owner directly
    h.send(c, cmd("GET", "k"))
    assert bytes(h.sent.pop(b)) == cmd("GET", "k") and a not in h.sent
    # ASK: once, after ASKING, whose reply is dropped; nothing remembered
    h.respond(b, b"-ASK %d 127.0.0.1:%d\r\n" % (slot, a.endpoint.port))
    assert bytes(h.sent.pop(a)) == b"*1\r\n$6\r\nASKING\r\n" + cmd("GET", "k")
    h.respond(a, b"+OK\r\n$1\r\nw\r\n")
    assert bytes(h.sent.pop(c)) == b"$1\r\nw\r\n"
    h.send(c, cmd("GET", "k"))
    assert bytes(h.sent.pop(b)) == cmd("GET", "k")  # the owner is still the MOVED one
    assert h.core.stats.redirects == 2


def test_a_redirection_to_a_node_the_cluster_does_not_list_reaches_the_client() -> None:
    h = Harness(cluster_mesh())
    c = h.client()
    h.send(c, cmd("GET", "k"))
    (up,) = h.connects
    h.connect(up)
    h.respond(up, b"*0\r\n-MOVED 1 10.9.9.9:6379\r\n")
    assert bytes(h.sent.pop(c)) == b"-MOVED 1 10.9.9.9:6379\r\n"


def test_cluster_slots_on_connect_fills_the_slot_table() -> None:
    from metamesh.codecs.redis.cluster import key_slot

    slot = key_slot(b"k")
    h = Harness(cluster_mesh())
    c = h.client()
    h.send(c, cmd("GET", "k"))
    (a,) = h.connects
    h.connect(a)
    other = 7002 if a.endpoint.port == 7001 else 7001
    table = b"*2\r\n" + b"".join(
        b"*3\r\n:%d\r\n:%d\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$2\r\nid\r\n" % (lo, hi, p)
        for lo, hi, p in ((0, slot, other), (slot + 1, 16383, a.endpoint.port))
    )
    h.respond(a, table + b"-MOVED %d 127.0.0.1:%d\r\n" % (slot, other))
    cs = h.core.clusters["c"]
    assert cs.slots is not None and len(cs.slots) == 16384
    (b,) = [u for u in h.connects if u is not a]
    h.connect(b)
    h.respond(b, table + b"$1\r\nv\r\n")
    assert bytes(h.sent.pop(c)) == b"$1\r\nv\r\n"
    h.send(c, cmd("GET", "k") + cmd("GET", "zz"))  # both straight to their owners
    assert bytes(h.sent.pop(b)).endswith(cmd("GET", "k"))
    zz = key_slot(b"zz")
    owner = b if zz <= slot else a
    assert bytes(h.sent.pop(owner)).endswith(cmd("GET", "zz"))


def test_a_split_del_is_answered_once_in_request_order() -> None:
    from metamesh.codecs.redis.cluster import key_slot

    h = Harness(cluster_mesh())
    c = h.client()
    keys = [b"a", b"b"]  # two slots
    assert key_slot(keys[0]) != key_slot(keys[1])
    h.send(c, encode_command([b"DEL", *keys]) + cmd("GET", "a"))
    ups = h.connects
    for up in ups:
        h.connect(up)
        h.respond(up, b"*0\r\n")  # CLUSTER SLOTS: nothing known
    sent = {up: bytes(h.sent.pop(up)) for up in ups}
    # round robin spread the parts over both nodes; answer the later ones first
    order = sorted(ups, key=lambda u: -len(sent[u]))
    for up in order:
        replies = b""
        for line in sent[up].split(b"*2\r\n")[1:]:
            if b"CLUSTER" not in line:  # (its reply was given above)
                replies += b":1\r\n" if b"DEL" in line else b"$1\r\nv\r\n"
        h.respond(up, replies)
    assert bytes(h.sent.pop(c)) == b":2\r\n$1\r\nv\r\n"


def replica_mesh(policy: str) -> Snapshot:
    """A cluster of a primary (7001) and its replica (7002), a listener reading by ``policy``."""
    listener = Listener(
        "l", "127.0.0.1", 0, "redis", "rc", stat_prefix="r",
        codec_options=(("mode", "CLUSTER"), ("read_policy", policy)),
    )  # fmt: skip
    nodes = (Endpoint("127.0.0.1", 7001), Endpoint("127.0.0.1", 7002))
    options = (("mode", "CLUSTER"), ("readonly", "true"))
    cluster = Cluster("c", nodes, protocol_options=options)
    route = Route("all", (), RouteAction(cluster="c", hash_policy=("slot",)))
    return Snapshot.build([listener], [cluster], [RouteConfiguration("rc", (route,))])


#: CLUSTER SLOTS: every slot on 7001, replicated on 7002
PRIMARY_AND_REPLICA = (
    b"*1\r\n*4\r\n:0\r\n:16383\r\n"
    b"*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$1\r\np\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$1\r\nr\r\n"
)


def learn_the_table(h: Harness, policy: str) -> tuple[object, dict[int, object]]:
    """A client whose first GET opens a connection (READONLY, CLUSTER SLOTS first) and teaches
    the core the table; returns the client and the upstreams by port, both connected."""
    c = h.client()
    h.send(c, cmd("GET", "k"))
    (first,) = h.connects
    h.connect(first)
    assert bytes(h.sent.pop(first)) == cmd("READONLY") + cmd("CLUSTER", "SLOTS") + cmd("GET", "k")
    h.respond(first, b"+OK\r\n" + PRIMARY_AND_REPLICA + b"$1\r\nv\r\n")
    assert bytes(h.sent.pop(c)) == b"$1\r\nv\r\n"
    ups = {first.endpoint.port: first}
    h.send(c, cmd("SET", "k", "w"))  # a write: always to the primary
    if 7001 not in ups:
        (primary,) = [u for u in h.connects if u is not first]
        h.connect(primary)
        h.respond(primary, b"+OK\r\n" + PRIMARY_AND_REPLICA)
        ups[7001] = primary
    assert bytes(h.sent.pop(ups[7001])).endswith(cmd("SET", "k", "w"))
    h.respond(ups[7001], b"+OK\r\n")
    assert bytes(h.sent.pop(c)) == b"+OK\r\n"
    return c, ups


def reads_by_port(h: Harness, c: object, ups: dict[int, object], n: int) -> dict[int, int]:
    """Send ``n`` GETs one at a time; how many each node got (opening the replica's
    connection when it is first used)."""
    got = {7001: 0, 7002: 0}
    for _ in range(n):
        h.send(c, cmd("GET", "k"))
        if 7002 not in ups and any(u.endpoint.port == 7002 for u in h.connects):
            (replica,) = [u for u in h.connects if u.endpoint.port == 7002]
            h.connect(replica)
            h.respond(replica, b"+OK\r\n" + PRIMARY_AND_REPLICA)
            ups[7002] = replica
        (port,) = [p for p, u in ups.items() if u in h.sent]
        assert bytes(h.sent.pop(ups[port])).endswith(cmd("GET", "k"))
        h.respond(ups[port], b"$1\r\nw\r\n")
        assert bytes(h.sent.pop(c)) == b"$1\r\nw\r\n"
        got[port] += 1
    return got


def test_read_policies_send_reads_to_replicas_and_writes_to_the_primary() -> None:
    for policy, expect in (
        ("REPLICA", lambda got: got == {7001: 0, 7002: 40}),
        ("PREFER_REPLICA", lambda got: got == {7001: 0, 7002: 40}),
        ("PREFER_MASTER", lambda got: got == {7001: 40, 7002: 0}),
        ("ANY", lambda got: got[7001] > 5 and got[7002] > 5),
    ):
        h = Harness(replica_mesh(policy))
        c, ups = learn_the_table(h, policy)
        got = reads_by_port(h, c, ups, 40)
        assert expect(got), (policy, got)
        # a reply from the replica never makes it the slot's owner: writes stay on the primary
        h.send(c, cmd("SET", "k", "x"))
        assert bytes(h.sent.pop(ups[7001])).endswith(cmd("SET", "k", "x"))


def test_without_a_read_policy_reads_stay_on_the_primary() -> None:
    h = Harness(replica_mesh("MASTER"))
    c, ups = learn_the_table(h, "MASTER")
    assert reads_by_port(h, c, ups, 20) == {7001: 20, 7002: 0}


def test_the_table_is_asked_for_again_and_replicas_learned_later_serve_reads() -> None:
    """A cluster's replicas appear in CLUSTER SLOTS only once the nodes have gossiped: a table
    learned at connect time without them is refreshed (every 5 s, on a connection in use)."""
    h = Harness(replica_mesh("REPLICA"))
    c = h.client()
    h.send(c, cmd("SET", "k", "v"))
    (first,) = h.connects
    h.connect(first)
    h.sent.pop(first)
    primary_only = b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$1\r\np\r\n"
    h.respond(first, b"+OK\r\n" + primary_only)  # READONLY, then the table: no replica yet
    ups = {first.endpoint.port: first}
    if first.endpoint.port != 7001:  # the SET was sent where the balancer picked: answered
        h.respond(first, b"-MOVED 1 127.0.0.1:7001\r\n")
        (primary,) = [u for u in h.connects if u is not first]
        h.connect(primary)
        h.sent.pop(primary)
        h.respond(primary, b"+OK\r\n" + primary_only)
        ups[7001] = primary
    h.respond(ups[7001], b"+OK\r\n")
    assert bytes(h.sent.pop(c)) == b"+OK\r\n"
    for u in ups.values():  # (a table asked for after the MOVED, if there was one)
        if u in h.sent and bytes(h.sent.pop(u)) == cmd("CLUSTER", "SLOTS"):
            h.respond(u, primary_only)
    h.sent.clear()
    assert reads_by_port(h, c, ups, 3) == {7001: 3, 7002: 0}  # no replica known: the primary
    h.now += 5.0  # the next reply asks again, and this time the replica is there
    h.send(c, cmd("GET", "k"))
    assert bytes(h.sent.pop(ups[7001])) == cmd("GET", "k")
    h.respond(ups[7001], b"$1\r\nw\r\n")
    assert bytes(h.sent.pop(c)) == b"$1\r\nw\r\n"
    assert bytes(h.sent.pop(ups[7001])) == cmd("CLUSTER", "SLOTS")
    h.respond(ups[7001], PRIMARY_AND_REPLICA)
    assert c not in h.sent
    assert reads_by_port(h, c, ups, 10) == {7001: 0, 7002: 10}


def test_an_mget_split_across_routes_with_remove_prefix_is_merged() -> None:
    """A part re-encoded by removePrefix is still a part (its reply merged, not sent alone)."""
    listener = Listener(
        "l", "127.0.0.1", 0, "redis", "rc", stat_prefix="r",
        codec_options=(("route_prefixes", "a:"),),
    )  # fmt: skip
    clusters = [
        Cluster("a", (Endpoint("127.0.0.1", 7001),)),
        Cluster("b", (Endpoint("127.0.0.1", 7002),)),
    ]
    routes = (
        Route(
            "a",
            (MetadataMatcher("key", MatchKind.PREFIX, "a:"),),
            RouteAction(cluster="a"),
            request_mutation=(("redis-remove-prefix", "a:"),),
        ),
        Route("b", (), RouteAction(cluster="b")),
    )
    h = Harness(Snapshot.build([listener], clusters, [RouteConfiguration("rc", routes)]))
    c = h.client()
    h.send(c, cmd("MGET", "a:1", "other") + cmd("GET", "a:2"))
    up_a, up_b = h.connects
    h.connect(up_a)
    h.connect(up_b)
    assert bytes(h.sent.pop(up_a)) == cmd("GET", "1") + cmd("GET", "2")
    assert bytes(h.sent.pop(up_b)) == cmd("GET", "other")
    h.respond(up_b, b"$1\r\nb\r\n")
    h.respond(up_a, b"$1\r\nx\r\n$1\r\ny\r\n")
    assert bytes(h.sent.pop(c)) == b"*2\r\n$1\r\nx\r\n$1\r\nb\r\n$1\r\ny\r\n"
