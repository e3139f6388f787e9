#!/usr/bin/env bash
# Regenerate samples/sample.pcap: a small capture of real programs (HTTP, DNS,
# SMTP, TLS, an "echo" line protocol, ICMP echo, DHCPv4) talking across a veth
# pair between two throw-away network namespaces.
#
# Usage: sudo samples/make_sample.sh
#
# Only the documentation addresses below are ever used as traffic targets:
#   client namespace  fp-sample-cli  192.0.2.1/24  2001:db8::1/64  02:00:00:fa:00:01
#   server namespace  fp-sample-srv  192.0.2.2/24  2001:db8::2/64  02:00:00:fa:00:02
# Neighbour entries are static, so there is no ARP / neighbour discovery on
# the wire; the capture filter keeps TCP, UDP and ICMP/ICMPv6 echo to or from
# the server, and DHCP (UDP 67/68) whatever its addresses.
set -euo pipefail

readonly CLI_NS=fp-sample-cli
readonly SRV_NS=fp-sample-srv
readonly CLI_IF=fp-cli0
readonly SRV_IF=fp-srv0
readonly CLI_MAC=02:00:00:fa:00:01
readonly SRV_MAC=02:00:00:fa:00:02
readonly CLI_V4=192.0.2.1
readonly SRV_V4=192.0.2.2
readonly CLI_V6=2001:db8::1
readonly SRV_V6=2001:db8::2
readonly HTTP_PORT=8000
readonly SMTP_PORT=25
readonly TLS_PORT=443
readonly TLS_ALT_PORT=8443
readonly ECHO_PORT=7
readonly DHCP_LEASE=192.0.2.100
readonly TLS_NAME=www.example.com
# ICMPv6 types 128/129 are echo request/reply (the byte after a 40-byte IPv6
# header without extension headers); neighbour discovery (133-136) stays out.
readonly CAPTURE_FILTER="((host ${SRV_V4} or host ${SRV_V6}) and (tcp or udp
 or icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply
 or (icmp6 and (ip6[40] == 128 or ip6[40] == 129))))
 or (udp and (port 67 or port 68))"

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly OUT="${SCRIPT_DIR}/sample.pcap"
PYTHON=${PYTHON:-python3}

WORK=""
PIDS=()
LAST_PID=""
TCPDUMP_PID=""

log() { printf '[make_sample] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

in_cli() { ip netns exec "$CLI_NS" "$@"; }
in_srv() { ip netns exec "$SRV_NS" "$@"; }

# spawn NS LOGFILE COMMAND...: run COMMAND in namespace NS in the background.
# `ip netns exec` execs COMMAND, so $! is the program itself and signals
# reach it directly.
spawn() {
    local ns=$1 logfile=$2
    shift 2
    ip netns exec "$ns" "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    ip netns del "$CLI_NS" 2>/dev/null || true
    ip netns del "$SRV_NS" 2>/dev/null || true
    if [[ -n $WORK && -d $WORK ]]; then
        if ((rc != 0)); then
            log "server logs follow:"
            tail -n 20 "$WORK"/*.log >&2 2>/dev/null || true
        fi
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}

# --- dependencies ------------------------------------------------------------

install_deps() {
    local -A pkg_for=(
        [tcpdump]=tcpdump [curl]=curl [dig]=dnsutils [dnsmasq]=dnsmasq-base
        [ip]=iproute2 [ss]=iproute2 [ethtool]=ethtool [python3]=python3
        [openssl]=openssl [ping]=iputils-ping [busybox]=busybox
    )
    local cmd pkgs=()
    for cmd in "${!pkg_for[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || pkgs+=("${pkg_for[$cmd]}")
    done
    if ((${#pkgs[@]})); then
        mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
        log "installing: ${pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
    if ! "$PYTHON" -c 'import aiosmtpd' 2>/dev/null; then
        log "installing aiosmtpd"
        # pip first; Debian's own package where pip is missing or refuses
        # (PEP 668: Debian's python3 under sudo is "externally managed").
        local pip_out
        if ! pip_out=$("$PYTHON" -m pip install -q aiosmtpd 2>&1); then
            log "pip could not install aiosmtpd; trying Debian's python3-aiosmtpd"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-aiosmtpd
        fi
        if ! "$PYTHON" -c 'import aiosmtpd' 2>/dev/null; then
            printf '%s\n' "$pip_out" >&2
            die "aiosmtpd is not importable by $PYTHON"
        fi
    fi
}

# --- helpers -------------------------------------------------------------------

# wait_for DESCRIPTION COMMAND...: poll COMMAND every 0.1 s for up to 10 s.
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 100; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "timed out waiting for $what"
}

# Readiness is checked with ss inside the server namespace, so the probes put
# no packets on the wire.
listening() { # PROTO(t|u) ADDR PORT
    [[ -n $(in_srv ss -Hn"$1"l "src [$2]:$3") ]]
}

pcap_started() { # tcpdump wrote its file header and reported it is listening
    [[ -s $WORK/capture.pcap ]] && grep -q 'listening on' "$WORK/tcpdump.log"
}

setup_netns() {
    ip netns del "$CLI_NS" 2>/dev/null || true
    ip netns del "$SRV_NS" 2>/dev/null || true
    ip netns add "$CLI_NS"
    ip netns add "$SRV_NS"
    ip link add name "$CLI_IF" address "$CLI_MAC" netns "$CLI_NS" type veth \
        peer name "$SRV_IF" address "$SRV_MAC" netns "$SRV_NS"

    local ns ifc addr4 addr6 peer4 peer6 peer_mac
    for ns in "$CLI_NS" "$SRV_NS"; do
        if [[ $ns == "$CLI_NS" ]]; then
            ifc=$CLI_IF addr4=$CLI_V4 addr6=$CLI_V6 peer4=$SRV_V4 peer6=$SRV_V6 peer_mac=$SRV_MAC
        else
            ifc=$SRV_IF addr4=$SRV_V4 addr6=$SRV_V6 peer4=$CLI_V4 peer6=$CLI_V6 peer_mac=$CLI_MAC
        fi
        ip -n "$ns" link set lo up
        # No link-local address, no router solicitations: less IPv6 chatter.
        ip -n "$ns" link set "$ifc" addrgenmode none
        ip netns exec "$ns" sysctl -qw "net.ipv6.conf.${ifc}.router_solicitations=0"
        # Full checksums in the frames (no partial checksum offload on veth).
        ip netns exec "$ns" ethtool -K "$ifc" tx off >/dev/null 2>&1 || true
        ip -n "$ns" addr add "${addr4}/24" dev "$ifc"
        ip -n "$ns" addr add "${addr6}/64" dev "$ifc" nodad
        ip -n "$ns" link set "$ifc" up
        ip -n "$ns" neigh replace "$peer4" lladdr "$peer_mac" nud permanent dev "$ifc"
        ip -n "$ns" neigh replace "$peer6" lladdr "$peer_mac" nud permanent dev "$ifc"
    done
}

# write_server_programs: the small Python servers and the TLS certificate.
write_server_programs() {
    # http.server's file handler plus a POST handler (http.server itself
    # answers POST with 501). HTTP/1.1 so that one curl run can reuse its
    # connection.
    cat >"$WORK/httpd.py" <<'PY'
import json
import socket
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        reply = json.dumps({"path": self.path, "received_bytes": len(body)}).encode() + b"\n"
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET


Server((sys.argv[1], int(sys.argv[2])), partial(Handler, directory=sys.argv[3])).serve_forever()
PY

    # The echo protocol of Packetbeat's TCP protocol generator tutorial: a
    # request is a line starting with ">", the response repeats it with "<";
    # anything else is answered with the error line "!error".
    cat >"$WORK/echod.py" <<'PY'
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"<" + line[1:] if line.startswith(b">") else b"!error\n")


socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
PY

    # Self-signed P-256 certificate (small, so the TLS 1.2 Certificate
    # message fits in one segment).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 3650 -set_serial 0x5a3b1e \
        -subj "/O=flowpipe sample/CN=${TLS_NAME}" \
        -addext "subjectAltName=DNS:${TLS_NAME},DNS:example.com" 2>/dev/null
}

start_servers() {
    local www=$WORK/www
    mkdir -p "$www"
    cat >"$www/index.html" <<'HTML'
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>flowpipe sample</title>
</head>
<body>
  <h1>flowpipe sample server</h1>
  <p>This page is served by Python's http.server inside the
     fp-sample-srv network namespace. It is captured by tcpdump for the
     flowpipe HTTP parser tests.</p>
</body>
</html>
HTML
    printf 'flowpipe sample: second resource for the keep-alive request\n' >"$www/about.txt"
    write_server_programs

    spawn "$SRV_NS" "$WORK/http4.log" "$PYTHON" "$WORK/httpd.py" "$SRV_V4" "$HTTP_PORT" "$www"
    spawn "$SRV_NS" "$WORK/http6.log" "$PYTHON" "$WORK/httpd.py" "$SRV_V6" "$HTTP_PORT" "$www"

    # DNS for example.test, and DHCPv4 with a fixed lease for the client's MAC.
    spawn "$SRV_NS" "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --conf-file=/dev/null \
        --pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" \
        --log-queries --log-dhcp --user=root --group=root \
        --no-resolv --no-hosts --bind-interfaces \
        --listen-address="$SRV_V4" --except-interface=lo --port=53 \
        --local=/example.test/ \
        --address=/www.example.test/192.0.2.80 \
        --host-record=mail.example.test,192.0.2.25,2001:db8::25 \
        --mx-host=example.test,mail.example.test,10 \
        --txt-record=example.test,"v=spf1 mx -all" \
        --dhcp-range=192.0.2.100,192.0.2.149,255.255.255.0,1h \
        --dhcp-host="${CLI_MAC},${DHCP_LEASE}" \
        --dhcp-option=option:domain-name,example.test \
        --dhcp-authoritative --no-ping --dhcp-leasefile="$WORK/dnsmasq.leases"

    spawn "$SRV_NS" "$WORK/smtp.log" "$PYTHON" -m aiosmtpd -n -l "${SRV_V4}:${SMTP_PORT}"

    # -rev: each line received is sent back reversed, so both directions
    # carry application data.
    local port
    for port in "$TLS_PORT" "$TLS_ALT_PORT"; do
        spawn "$SRV_NS" "$WORK/tls${port}.log" openssl s_server -accept "${SRV_V4}:${port}" \
            -cert "$WORK/tls.crt" -key "$WORK/tls.key" -alpn h2,http/1.1 -rev
    done

    spawn "$SRV_NS" "$WORK/echo.log" "$PYTHON" "$WORK/echod.py" "$SRV_V4" "$ECHO_PORT"

    wait_for "HTTP server on ${SRV_V4}" listening t "$SRV_V4" "$HTTP_PORT"
    wait_for "HTTP server on ${SRV_V6}" listening t "$SRV_V6" "$HTTP_PORT"
    wait_for "dnsmasq (udp)" listening u "$SRV_V4" 53
    wait_for "dnsmasq (tcp)" listening t "$SRV_V4" 53
    wait_for "dnsmasq (dhcp)" listening u 0.0.0.0 67
    wait_for "SMTP server" listening t "$SRV_V4" "$SMTP_PORT"
    wait_for "TLS server on ${TLS_PORT}" listening t "$SRV_V4" "$TLS_PORT"
    wait_for "TLS server on ${TLS_ALT_PORT}" listening t "$SRV_V4" "$TLS_ALT_PORT"
    wait_for "echo server" listening t "$SRV_V4" "$ECHO_PORT"
}

start_capture() {
    # --immediate-mode: hand each packet over at once; with the default
    # TPACKET_V3 block buffering, packets still in an unfinished block are
    # lost when tcpdump stops. -Z root: write the file without dropping to
    # the tcpdump user.
    spawn "$CLI_NS" "$WORK/tcpdump.log" tcpdump -i "$CLI_IF" -n -s 0 -U \
        --immediate-mode -Z root -w "$WORK/capture.pcap" "$CAPTURE_FILTER"
    TCPDUMP_PID=$LAST_PID
    wait_for "tcpdump" pcap_started
}

stop_capture() {
    sleep 0.3 # let the last FIN/ACKs cross the wire
    kill -INT "$TCPDUMP_PID"
    wait "$TCPDUMP_PID" || die "tcpdump exited with status $?"
    local -a still_running=()
    local pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$TCPDUMP_PID" ]] || still_running+=("$pid")
    done
    PIDS=("${still_running[@]}")
    log "tcpdump: $(grep -E 'packets (captured|dropped by kernel)' "$WORK/tcpdump.log" | paste -sd ',' -)"
}

run_clients() {
    local base4="http://${SRV_V4}:${HTTP_PORT}"
    local -a curl_opts=(--silent --show-error --max-time 5
        --write-out '  %{http_code} %{url_effective} (conn #%{num_connects})\n')

    log "HTTP"
    in_cli curl "${curl_opts[@]}" -o /dev/null "${base4}/"
    in_cli curl "${curl_opts[@]}" -o /dev/null "${base4}/no-such-page.html"
    in_cli curl "${curl_opts[@]}" -o /dev/null -g "http://[${SRV_V6}]:${HTTP_PORT}/"
    # Two URLs in one curl run: one keep-alive connection (conn #0 = reused).
    in_cli curl "${curl_opts[@]}" -o /dev/null "${base4}/index.html" \
        -o /dev/null "${base4}/about.txt"
    in_cli curl "${curl_opts[@]}" -o /dev/null --data 'name=flowpipe&sample=1' "${base4}/submit"

    log "DNS"
    local -a dig_opts=(+time=2 +tries=1 +noall +answer +comments)
    local q
    for q in "www.example.test A" "mail.example.test AAAA" "example.test MX" \
        "example.test TXT" "nonexistent.example.test A"; do
        # shellcheck disable=SC2086 # name and type are split on purpose
        in_cli dig @"$SRV_V4" "${dig_opts[@]}" $q | grep -E 'status:|IN' | sed 's/^/  /'
    done
    in_cli dig @"$SRV_V4" +tcp "${dig_opts[@]}" mail.example.test A | grep -E 'status:|IN' | sed 's/^/  /'

    log "SMTP"
    in_cli "$PYTHON" - "$SRV_V4" "$SMTP_PORT" <<'PY'
import smtplib
import sys
from email.message import EmailMessage

host, port = sys.argv[1], int(sys.argv[2])
first = EmailMessage()
first["From"] = "alice@client.example.test"
first["To"] = "bob@example.test, carol@example.test"
first["Subject"] = "flowpipe sample message"
first["Date"] = "Mon, 01 Jan 2024 12:00:00 +0000"
first["Message-ID"] = "<sample-1@client.example.test>"
first.set_content("Hello Bob and Carol,\n\nthis message was captured for the flowpipe SMTP tests.\n\nAlice\n")

second = EmailMessage()
second["From"] = "alice@client.example.test"
second["To"] = "dave@example.test"
second["Subject"] = "flowpipe sample message 2"
second["Date"] = "Mon, 01 Jan 2024 12:01:00 +0000"
second["Message-ID"] = "<sample-2@client.example.test>"
second.set_content("Hi Dave,\n\na second message on the same SMTP connection.\n\nAlice\n")

with smtplib.SMTP(host, port, local_hostname="client.example.test", timeout=5) as smtp:
    smtp.ehlo()
    for msg, rcpts in ((first, ("bob@example.test", "carol@example.test")), (second, ("dave@example.test",))):
        code, _ = smtp.mail("alice@client.example.test")
        assert code == 250, code
        for rcpt in rcpts:
            code, _ = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code)
        code, _ = smtp.data(msg.as_bytes())
        assert code == 250, code
        print(f"  250 message accepted for {len(rcpts)} recipient(s)")
PY
    # smtplib's context manager sent QUIT.

    log "TLS"
    # One line, then stdin closes: s_client sends close_notify and quits. The
    # pause lets the reversed line (and TLS 1.3 session tickets) arrive first.
    tls_session "$TLS_PORT" -tls1_2 -servername "$TLS_NAME" -alpn http/1.1
    tls_session "$TLS_PORT" -tls1_3 -servername "$TLS_NAME" -alpn h2
    tls_session "$TLS_ALT_PORT" -tls1_3 -servername "$TLS_NAME"

    log "echo (TCP ${ECHO_PORT})"
    in_cli "$PYTHON" - "$SRV_V4" "$ECHO_PORT" <<'PY'
import socket
import sys

with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
    replies = sock.makefile("rb")
    for request in (b">hello\n", b">flowpipe sample\n", b"bogus\n"):
        sock.sendall(request)
        print(f"  {request!r} -> {replies.readline()!r}")
PY

    log "ICMP echo"
    in_cli ping -n -c 2 -i 0.2 -W 2 "$SRV_V4" | grep -E 'transmitted' | sed 's/^/  /'
    in_cli ping -6 -n -c 1 -W 2 "$SRV_V6" | grep -E 'transmitted' | sed 's/^/  /'

    log "DHCPv4"
    # udhcpc works on raw sockets from 0.0.0.0; the no-op script (/bin/true)
    # leaves the interface's static address alone. No ARP check (-a), no
    # RELEASE (-R): DISCOVER, OFFER, REQUEST, ACK.
    in_cli busybox udhcpc -i "$CLI_IF" -f -q -n -t 3 -T 1 -s /bin/true \
        -x hostname:fp-sample-cli 2>&1 | sed 's/^/  /'
}

# tls_session PORT S_CLIENT_OPTIONS...: one short openssl s_client session.
tls_session() {
    local port=$1
    shift
    { printf 'hello over tls\n'; sleep 0.5; } |
        in_cli openssl s_client -connect "${SRV_V4}:${port}" -brief "$@" 2>&1 |
        grep -E '^(Protocol version|Ciphersuite)' | paste -sd ' ' - | sed "s/^/  ${port}: /"
}

main() {
    ((EUID == 0)) || die "run as root: sudo $0"
    install_deps

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d /tmp/fp-sample.XXXXXX)

    setup_netns
    start_servers
    start_capture
    run_clients
    stop_capture

    install -m 0644 "$WORK/capture.pcap" "$OUT"
    if [[ -n ${SUDO_UID:-} && -n ${SUDO_GID:-} ]]; then
        chown "$SUDO_UID:$SUDO_GID" "$OUT"
    fi
    local count
    count=$(tcpdump -n -r "$OUT" 2>/dev/null | wc -l)
    ((count > 0)) || die "the capture is empty"
    log "wrote $OUT: $count packets, $(stat -c %s "$OUT") bytes"
}

main "$@"
