"""Connection policy as Triton's flags and gRPC's semantics: a connection past --max-connection-age-s
is closed (clients reconnect, so an L4 balancer can spread them), and a client pinging faster than
the server permits is told to go away (too_many_pings) instead of costing it."""

from __future__ import annotations

import threading

import grpc
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve.server import start_server

from tests.helpers.serving import settings_for, wait_until


class States:
    """Every connectivity state a channel passes through."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.seen: list[grpc.ChannelConnectivity] = []
        self._lock = threading.Lock()
        channel.subscribe(self._record, try_to_connect=False)

    def _record(self, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            self.seen.append(state)

    def count_after_ready(self, *states: grpc.ChannelConnectivity) -> int:
        """How often the channel entered one of ``states`` after its first READY (the subscription
        also reports the state it starts in)."""
        with self._lock:
            seen = list(self.seen)
        if grpc.ChannelConnectivity.READY not in seen:
            return 0
        return sum(state in states for state in seen[seen.index(grpc.ChannelConnectivity.READY):])


def test_connections_older_than_max_age_are_closed_and_clients_reconnect(tiny_model):
    settings = settings_for(tiny_model, max_connection_age_s=0.3, max_connection_age_grace_s=0.2)
    with start_server(settings) as running, grpc.insecure_channel(running.address) as channel:
        states = States(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        idle = grpc.ChannelConnectivity.IDLE
        wait_until(lambda: states.count_after_ready(idle) >= 1, timeout=10, what="GOAWAY at max age")
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live  # a new connection serves the next call
        wait_until(lambda: states.count_after_ready(grpc.ChannelConnectivity.READY) >= 2, timeout=10,
                   what="a second connection")


def test_without_a_max_age_connections_stay_open(tiny_model):
    """Beside it, a server with a max age closes its connection twice: only once that has happened
    (however slow the machine) is the connection to the server without one checked."""
    aged = settings_for(tiny_model, max_connection_age_s=0.3, max_connection_age_grace_s=0.2)
    with start_server(settings_for(tiny_model)) as running, grpc.insecure_channel(running.address) as channel, \
            start_server(aged) as control, grpc.insecure_channel(control.address) as control_channel:
        states, control_states = States(channel), States(control_channel)
        stub, control_stub = (pb_grpc.GRPCInferenceServiceStub(c) for c in (channel, control_channel))
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert control_stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        idle = grpc.ChannelConnectivity.IDLE
        wait_until(lambda: control_states.count_after_ready(idle) >= 1, timeout=30, what="the control's first GOAWAY")
        assert control_stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        wait_until(lambda: control_states.count_after_ready(idle) >= 2, timeout=30, what="the control's second GOAWAY")
        assert states.count_after_ready(idle) == 0
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert states.count_after_ready(idle) == 0  # served on the connection it had


def test_a_client_pinging_too_often_is_sent_away(tiny_model):
    abusive = [
        ("grpc.keepalive_time_ms", 50),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with start_server(settings_for(tiny_model)) as running, \
            grpc.insecure_channel(running.address, options=abusive) as channel:
        states = States(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        # Default policy: pings without calls are not permitted; after --max-ping-strikes the server
        # answers GOAWAY (too_many_pings) and closes the connection.
        wait_until(lambda: states.count_after_ready(grpc.ChannelConnectivity.IDLE,
                                                    grpc.ChannelConnectivity.TRANSIENT_FAILURE) >= 1,
                   timeout=10, what="GOAWAY for too many pings")
        assert running.server.service.ready  # the server is unaffected


def test_pings_the_server_permits_keep_the_connection(tiny_model):
    """The control of the test above: the same client against a server that allows its pings."""
    frequent = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0)]
    settings = settings_for(tiny_model, keepalive_permit_without_calls=True, min_ping_interval_s=0.01)
    closed = grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE
    with start_server(settings) as running, grpc.insecure_channel(running.address, options=frequent) as channel, \
            start_server(settings_for(tiny_model)) as strict, \
            grpc.insecure_channel(strict.address, options=frequent) as strict_channel:
        states, strict_states = States(channel), States(strict_channel)
        for each in (channel, strict_channel):
            assert pb_grpc.GRPCInferenceServiceStub(each).ServerLive(pb.ServerLiveRequest(), timeout=5).live
        # The same pings sent to a server with the default policy get that connection closed: by then
        # the permitted connection has been pinged as often, however slow the machine.
        wait_until(lambda: strict_states.count_after_ready(*closed) >= 1, timeout=30,
                   what="GOAWAY for too many pings from the default server")
        assert states.count_after_ready(*closed) == 0
