"""A small authoritative DNS server on loopback (UDP and TCP), for resolver and delivery tests.

Zone data is set per test: `dns.mx("partner.test", (10, "mx.partner.test"))`,
`dns.a("mx.partner.test", "127.0.0.1")`, `dns.txt("s._domainkey.a.test", "v=DKIM1; ...")`,
`dns.add(name, "TXT", '"one" "two"')` (any type, as zone file rdata), `dns.nxdomain(...)`,
`dns.servfail(...)`, `dns.silent(...)` (never answers: a timeout).  Any other name is NXDOMAIN.
"""

from __future__ import annotations

import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 300


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.names: set[str] = set()
        self.servfails: set[str] = set()
        self.silents: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.udp, self.tcp = self._bind()
        self.port = self.udp.server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                         daemon=True) for s in (self.udp, self.tcp)]
        for thread in self.threads:
            thread.start()

    def _bind(self) -> tuple[socketserver.UDPServer, socketserver.TCPServer]:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2)
                if len(head) < 2:
                    return
                data = self.request.recv(struct.unpack("!H", head)[0])
                reply = server.answer(data)
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        for _ in range(20):  # the same port number for UDP and TCP
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
            try:
                tcp = _TcpServer(("127.0.0.1", udp.server_address[1]), Tcp)
            except OSError:
                udp.server_close()
                continue
            udp.daemon_threads = tcp.daemon_threads = True
            return udp, tcp
        raise OSError("no free port for the test DNS server")

    # --- zone data ---

    def add(self, name: str, rdtype: str, *rdata: str) -> None:
        with self.lock:
            self.names.add(_key(name))
            self.records.setdefault((_key(name), rdtype), []).extend(rdata)

    def mx(self, domain: str, *hosts: tuple[int, str]) -> None:
        self.add(domain, "MX", *(f"{pref} {_key(host)}" for pref, host in hosts))

    def null_mx(self, domain: str) -> None:
        self.add(domain, "MX", "0 .")

    def a(self, name: str, *addresses: str) -> None:
        self.add(name, "A", *addresses)

    def aaaa(self, name: str, *addresses: str) -> None:
        self.add(name, "AAAA", *addresses)

    def txt(self, name: str, *values: str) -> None:
        """One TXT record per value, split in 255-byte strings as zone files write them."""
        self.add(name, "TXT", *(" ".join(f'"{v[i:i + 255]}"' for i in range(0, len(v), 255))
                                for v in values))

    def exists(self, name: str) -> None:
        """The name exists but has no records of any asked type."""
        with self.lock:
            self.names.add(_key(name))

    def servfail(self, name: str, on: bool = True) -> None:
        with self.lock:
            (self.servfails.add if on else self.servfails.discard)(_key(name))

    def silent(self, name: str) -> None:
        with self.lock:
            self.silents.add(_key(name))

    def clear(self, name: str) -> None:
        with self.lock:
            key = _key(name)
            self.names.discard(key)
            self.servfails.discard(key)
            self.silents.discard(key)
            for record_key in [k for k in self.records if k[0] == key]:
                del self.records[record_key]

    # --- answering ---

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        with self.lock:
            self.queries.append((name, rdtype))
            if name in self.silents:
                return None
            if name in self.servfails:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif rdata := self.records.get((name, rdtype)):
                response.answer.append(dns.rrset.from_text_list(
                    question.name, TTL, dns.rdataclass.IN, question.rdtype, rdata))
        return response.to_wire()

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

