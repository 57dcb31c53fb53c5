"""Scenarios run by Python's paho-mqtt 2.x (MQTT 5) against a broker under test.

Usage: python3 scenarios.py SCENARIO HOST PORT

Each scenario prints what it checked and exits with status 0 when every check holds, or prints
`FAIL: ...` and exits with status 1. Every wait is bounded. The Rust test
`mqttproto/tests/broker_paho.rs` starts the broker on a free loopback port and runs each scenario.
"""

import os
import queue
import signal
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 10.0
HOST = "127.0.0.1"
PORT = 1883


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)
    print("ok:", what, flush=True)


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


class Client:
    """A paho client with its callbacks turned into bounded queues."""

    def __init__(self, client_id=None, username=None, password=None, will=None):
        self.client_id = client_id or unique("paho")
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, props = will
            self.c.will_set(topic, payload, qos=qos, retain=False, properties=props)
        self.connacks = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.acks = {}
        self.ack_events = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        self.connack_properties = None

    # callbacks (run on paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_properties = properties
        self.connacks.put((flags.session_present, reason_code.value))

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks.put((mid, [rc.value for rc in reason_codes]))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self.unsubacks.put(mid)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.ack_events.put((mid, reason_code.value))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects.put(reason_code.value)

    def connect(self, clean_start=True, session_expiry=None, expect_rc=0):
        props = Properties(PacketTypes.CONNECT)
        if session_expiry is not None:
            props.SessionExpiryInterval = session_expiry
        self.c.connect(HOST, PORT, keepalive=30, clean_start=clean_start, properties=props)
        self.c.loop_start()
        try:
            session_present, rc = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise Failure("%s: no CONNACK within %ss" % (self.client_id, WAIT))
        if expect_rc is not None and rc != expect_rc:
            raise Failure("%s: CONNACK reason 0x%02x, expected 0x%02x" % (self.client_id, rc, expect_rc))
        return session_present, rc

    def subscribe(self, filter_, qos=1, no_local=False, rap=False, rh=0, sub_id=None):
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        options = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)
        result, mid = self.c.subscribe(filter_, options=options, properties=props)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Failure("subscribe %s: %s" % (filter_, mqtt.error_string(result)))
        try:
            got_mid, codes = self.subacks.get(timeout=WAIT)
        except queue.Empty:
            raise Failure("no SUBACK for %s within %ss" % (filter_, WAIT))
        if got_mid != mid:
            raise Failure("SUBACK for packet id %d, expected %d" % (got_mid, mid))
        return codes

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        """Publishes and waits for the PUBACK/PUBCOMP (QoS 1/2) or the write (QoS 0)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Failure("publish %s: %s" % (topic, mqtt.error_string(info.rc)))
        deadline = time.monotonic() + WAIT
        while info.mid not in self.acks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("publish to %r (QoS %d) not acknowledged within %ss" % (topic, qos, WAIT))
            try:
                mid, rc = self.ack_events.get(timeout=left)
            except queue.Empty:
                continue
            self.acks[mid] = rc
        return self.acks.pop(info.mid)

    def message(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect_message(self, what, timeout=WAIT):
        m = self.message(timeout)
        if m is None:
            raise Failure("%s: no message within %ss" % (what, timeout))
        return m

    def expect_silence(self, what, timeout=0.5):
        m = self.message(timeout)
        if m is not None:
            raise Failure("%s: unexpected message on %r: %r" % (what, m.topic, m.payload))
        print("ok:", what, flush=True)

    def disconnect(self, props=None):
        self.c.disconnect(properties=props)
        self.c.loop_stop()

    def stop(self):
        """Ends the network loop without a DISCONNECT packet reaching anyone who cares."""
        self.c.loop_stop()


def user_properties(props):
    return sorted(getattr(props, "UserProperty", []) or [])


# ---- scenarios -----------------------------------------------------------------------------


def qos_round_trips():
    topic = unique("paho/qos")
    sub = Client()
    sub.connect()
    check(sub.subscribe(topic, qos=2) == [2], "SUBACK grants QoS 2")
    pub = Client()
    pub.connect()
    for qos in (0, 1, 2):
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.MessageExpiryInterval = 60
        props.ContentType = "text/plain"
        props.ResponseTopic = topic + "/reply"
        props.CorrelationData = b"corr-%d" % qos
        props.UserProperty = [("k", "v%d" % qos), ("lang", "python")]
        rc = pub.publish(topic, "payload at qos %d" % qos, qos=qos, props=props)
        check(rc == 0, "QoS %d publish acknowledged with 0x00" % qos)
        m = sub.expect_message("QoS %d message" % qos)
        check(m.topic == topic and m.payload == b"payload at qos %d" % qos, "QoS %d payload and topic" % qos)
        check(m.qos == qos, "delivered at QoS %d" % qos)
        p = m.properties
        check(getattr(p, "PayloadFormatIndicator", None) == 1, "Payload Format Indicator forwarded [MQTT-3.3.2-4]")
        check(getattr(p, "ContentType", None) == "text/plain", "Content Type forwarded [MQTT-3.3.2-20]")
        check(getattr(p, "ResponseTopic", None) == topic + "/reply", "Response Topic forwarded [MQTT-3.3.2-15]")
        check(getattr(p, "CorrelationData", None) == b"corr-%d" % qos, "Correlation Data forwarded [MQTT-3.3.2-16]")
        check(user_properties(p) == sorted([("k", "v%d" % qos), ("lang", "python")]),
              "User Properties forwarded in order [MQTT-3.3.2-17, -18]")
        expiry = getattr(p, "MessageExpiryInterval", None)
        check(expiry is not None and 0 < expiry <= 60, "Message Expiry Interval forwarded, not increased [MQTT-3.3.2-6]")
    sub.disconnect()
    pub.disconnect()


def retained():
    topic = unique("paho/retained")
    pub = Client()
    pub.connect()
    rc = pub.publish(topic, "kept", qos=1, retain=True)
    check(rc == 0x10, "retained publish without subscribers: PUBACK 0x10 No matching subscribers")
    a = Client()
    a.connect()
    a.subscribe(topic, qos=1, rh=0)
    m = a.expect_message("retained message on subscribe")
    check(m.payload == b"kept" and m.retain, "retained message sent with RETAIN=1 on subscribe [MQTT-3.3.1-9]")
    # Retain handling 2: no retained messages at subscribe.
    b = Client()
    b.connect()
    b.subscribe(topic, qos=1, rh=2)
    b.expect_silence("retain handling 2 sends no retained message [MQTT-3.3.1-11]")
    # Retain handling 1: only for a new subscription.
    c = Client()
    c.connect()
    c.subscribe(topic, qos=1, rh=1)
    c.expect_message("retain handling 1, new subscription")
    c.subscribe(topic, qos=1, rh=1)
    c.expect_silence("retain handling 1 sends nothing for an existing subscription [MQTT-3.3.1-10]")
    # Retain As Published.
    rap = Client()
    rap.connect()
    rap.subscribe(topic, qos=1, rap=True, rh=2)
    pub.publish(topic, "live", qos=1, retain=True)
    m = a.expect_message("live retained message, RAP=0")
    check(m.payload == b"live" and not m.retain, "RETAIN cleared when Retain As Published is 0 [MQTT-3.3.1-12]")
    m = rap.expect_message("live retained message, RAP=1")
    check(m.payload == b"live" and m.retain, "RETAIN kept when Retain As Published is 1 [MQTT-3.3.1-13]")
    # An empty retained payload clears it.
    pub.publish(topic, b"", qos=1, retain=True)
    a.expect_message("the clearing message itself")
    d = Client()
    d.connect()
    d.subscribe(topic, qos=1)
    d.expect_silence("an empty retained message clears the retained message [MQTT-3.3.1-6, -7]")
    for x in (pub, a, b, c, rap, d):
        x.disconnect()


def will_child():
    """Connects with a will, reports, then waits to be killed (run as a child process)."""
    topic, delay = sys.argv[4], int(sys.argv[5])
    props = Properties(PacketTypes.WILLMESSAGE)
    if delay:
        props.WillDelayInterval = delay
    c = Client(will=(topic, "gone", 1, props))
    c.connect(session_expiry=60 if delay else None)
    print("connected", flush=True)
    time.sleep(60)


def will(delay):
    topic = unique("paho/will")
    sub = Client()
    sub.connect()
    sub.subscribe(topic, qos=1)
    child = subprocess.Popen(
        [sys.executable, __file__, "will_child", HOST, str(PORT), topic, str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        check(line.strip() == "connected", "the will client connected")
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=WAIT)
        m = sub.expect_message("will message", timeout=WAIT + delay)
        waited = time.monotonic() - killed
        check(m.payload == b"gone" and m.qos == 1, "will published when the connection died [MQTT-3.1.2-8]")
        if delay:
            check(waited >= delay - 0.25, "will held back for its Will Delay Interval of %ds (%.2fs) [MQTT-3.1.3-9]" % (delay, waited))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    sub.disconnect()


def will_no_delay():
    will(0)


def will_with_delay():
    will(2)


def session_resume():
    topic = unique("paho/session")
    cid = unique("paho-session")
    s = Client(client_id=cid)
    present, _ = s.connect(clean_start=True, session_expiry=60)
    check(not present, "first connection: no session present")
    s.subscribe(topic, qos=1)
    s.disconnect()
    pub = Client()
    pub.connect()
    for i in range(5):
        check(pub.publish(topic, "m%d" % i, qos=1) == 0, "queued message %d acknowledged" % i)
    pub.disconnect()
    s = Client(client_id=cid)
    present, _ = s.connect(clean_start=False, session_expiry=60)
    check(present, "session present on resume [MQTT-3.2.2-2]")
    got = [s.expect_message("queued message %d" % i).payload for i in range(5)]
    check(got == [b"m%d" % i for i in range(5)], "queued QoS 1 messages delivered in order after resume")
    s.expect_silence("nothing else delivered")
    # Session Expiry Interval changed at DISCONNECT to 1 s: the session ends a second later.
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 1
    s.disconnect(props)
    time.sleep(2.5)
    s = Client(client_id=cid)
    present, _ = s.connect(clean_start=False, session_expiry=0)
    check(not present, "session gone after its expiry interval [MQTT-3.1.2-23]")
    s.disconnect()


def shared_subscription():
    topic = unique("paho/shared")
    group = "$share/g%s/%s" % (uuid.uuid4().hex[:6], topic)
    a, b = Client(), Client()
    for x in (a, b):
        x.connect()
        check(x.subscribe(group, qos=1) == [1], "shared subscription granted")
    pub = Client()
    pub.connect()
    n = 20
    for i in range(n):
        pub.publish(topic, "s%d" % i, qos=1)
    got = {}
    deadline = time.monotonic() + WAIT
    while len(got.get("a", [])) + len(got.get("b", [])) < n and time.monotonic() < deadline:
        for name, x in (("a", a), ("b", b)):
            m = x.message(0.05)
            if m is not None:
                got.setdefault(name, []).append(m.payload)
    everything = got.get("a", []) + got.get("b", [])
    check(sorted(everything) == sorted(b"s%d" % i for i in range(n)), "each message delivered to exactly one member [MQTT-4.8.2-3]")
    check(len(got.get("a", [])) > 0 and len(got.get("b", [])) > 0, "both members received messages")
    for x in (a, b, pub):
        x.disconnect()


def subscription_identifiers():
    base = unique("paho/sid")
    sub = Client()
    sub.connect()
    sub.subscribe(base + "/#", qos=1, sub_id=7)
    sub.subscribe(base + "/x", qos=1, sub_id=9)
    pub = Client()
    pub.connect()
    pub.publish(base + "/x", "both", qos=1)
    pub.publish(base + "/y", "one", qos=1)
    ids = []
    payloads = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and b"one" not in payloads:
        m = sub.message(0.1)
        if m is None:
            continue
        payloads.append(m.payload)
        got = getattr(m.properties, "SubscriptionIdentifier", [])
        ids.append((m.payload, sorted(got if isinstance(got, list) else [got])))
    both = sorted(i for p, l in ids if p == b"both" for i in l)
    check(both == [7, 9], "message matching two subscriptions carries both identifiers [MQTT-3.3.4-3, -4]")
    one = [l for p, l in ids if p == b"one"]
    check(one == [[7]], "message matching one subscription carries its identifier")
    sub.disconnect()
    pub.disconnect()


def topic_alias():
    topic = unique("paho/alias")
    sub = Client()
    sub.connect()
    sub.subscribe(topic, qos=1)
    pub = Client()
    pub.connect()
    maximum = getattr(pub.connack_properties, "TopicAliasMaximum", 0)
    check(maximum >= 1, "CONNACK announces a Topic Alias Maximum (%d)" % maximum)
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    check(pub.publish(topic, "first", qos=1, props=props) == 0, "publish setting alias 1")
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    check(pub.publish("", "second", qos=1, props=props) == 0, "publish by alias 1 only [MQTT-3.3.2-12]")
    for payload in (b"first", b"second"):
        m = sub.expect_message(payload.decode())
        check(m.topic == topic and m.payload == payload, "subscriber sees the full topic for %r" % payload)
    # An alias above the maximum is a protocol error: the broker disconnects with 0x94.
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = maximum + 1
    pub.c.publish(topic, "bad", qos=1, properties=props)
    try:
        rc = pub.disconnects.get(timeout=WAIT)
    except queue.Empty:
        raise Failure("no disconnect after an alias above Topic Alias Maximum")
    # paho 2.1 reads a DISCONNECT's reason code only when the packet has more than 2 bytes
    # (so it reports a short DISCONNECT 0x94 as 0); the reason code itself is checked by the
    # core's tests. What paho can see: the broker ended the connection.
    check(rc in (0, 0x94), "alias above the maximum: the broker disconnects [MQTT-3.3.2-9]")
    sub.expect_silence("the bad message is not delivered")
    pub.stop()
    sub.disconnect()


def no_local():
    topic = unique("paho/nolocal")
    me = Client()
    me.connect()
    me.subscribe(topic, qos=1, no_local=True)
    other = Client()
    other.connect()
    me.publish(topic, "mine", qos=1)
    other.publish(topic, "theirs", qos=1)
    m = me.expect_message("the other client's message")
    check(m.payload == b"theirs", "own message not delivered with No Local [MQTT-3.8.3-3]")
    me.expect_silence("nothing else")
    me.disconnect()
    other.disconnect()


def auth_failures():
    # The broker is started with a password file (alice / s3cret) and an ACL file
    # (alice: readwrite alice/#).
    bad = Client(username="alice", password="wrong")
    _, rc = bad.connect(expect_rc=None)
    check(rc == 0x86, "wrong password: CONNACK 0x86 (got 0x%02x)" % rc)
    bad.stop()
    nobody = Client()
    _, rc = nobody.connect(expect_rc=None)
    check(rc == 0x87, "no user name: CONNACK 0x87 (got 0x%02x)" % rc)
    nobody.stop()
    alice = Client(username="alice", password="s3cret")
    alice.connect()
    check(alice.subscribe("alice/inbox", qos=1) == [1], "allowed filter granted")
    check(alice.subscribe("bob/inbox", qos=1) == [0x87], "denied filter: SUBACK 0x87")
    check(alice.publish("alice/inbox", "hi", qos=1) == 0, "allowed publish: PUBACK 0x00")
    m = alice.expect_message("own allowed message")
    check(m.payload == b"hi", "allowed message delivered")
    check(alice.publish("bob/inbox", "no", qos=1) == 0x87, "denied publish: PUBACK 0x87")
    # paho ignores a failure code in PUBREC and sends PUBREL anyway; the broker, whose flow ended
    # with PUBREC 0x87, answers that PUBREL with PUBCOMP 0x92, which paho reports. Either way
    # the publish failed.
    rc = alice.publish("bob/inbox", "no", qos=2)
    check(rc >= 0x80, "denied publish at QoS 2 reported as failed (0x%02x)" % rc)
    alice.disconnect()


SCENARIOS = {
    "qos_round_trips": qos_round_trips,
    "retained": retained,
    "will_no_delay": will_no_delay,
    "will_with_delay": will_with_delay,
    "session_resume": session_resume,
    "shared_subscription": shared_subscription,
    "subscription_identifiers": subscription_identifiers,
    "topic_alias": topic_alias,
    "no_local": no_local,
    "auth_failures": auth_failures,
    "will_child": will_child,
}


def main():
    global HOST, PORT
    if len(sys.argv) < 4 or sys.argv[1] not in SCENARIOS:
        print("usage: scenarios.py {%s} HOST PORT" % ",".join(SCENARIOS), file=sys.stderr)
        return 2
    HOST, PORT = sys.argv[2], int(sys.argv[3])
    try:
        SCENARIOS[sys.argv[1]]()
    except Failure as e:
        print("FAIL:", e, flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    # Never outlive a hung broker: the whole scenario is bounded.
    signal.alarm(60)
    sys.exit(main())
