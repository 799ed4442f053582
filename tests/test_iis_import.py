"""Issue 14: `mailroot import-iis` on MetaBase.xml files written from Microsoft's metabase
property reference; each imported config is compared key by key and passes `mailroot check`."""

from __future__ import annotations

import itertools
import json
import re
import struct
from pathlib import Path

import pytest
import yaml

from relay.cli import iis_import, main, metabase
from relay.cli.iis_route_action import DIVERTING, ROUTE_BITS
from relay.core import config_loader
from tests.conftest import drop_file, sample, wait_for

HERE = Path(__file__).resolve().parent / "metabase"
R = 0x80000000


def run_import(tmp_path: Path, source: Path | str, *extra: str) -> tuple[int, dict, Path]:
    out = tmp_path / "imported.yaml"
    code = main(["import-iis", str(source), "-o", str(out), *extra])
    return code, (yaml.safe_load(out.read_text()) if out.exists() else {}), out


def metabase_text(name: str, **replace: str) -> str:
    text = (HERE / name).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_default_install_imports_to_mailroot_defaults(tmp_path, capsys) -> None:
    code, imported, out = run_import(tmp_path, HERE / "default.xml")
    assert code == 0
    # The machine's own names, the binding and IIS's 100 connections per domain (mailroot's
    # 20 is Postfix's and Exchange's) are all that differ from mailroot's defaults: 2048 KB
    # messages, 15/30/60/240 minute retries, 12 h / 2 d expiry... are not written.
    assert imported == {"domains": {"local": {"default": "win2003.example.local"}},
                        "delivery": {"max_connections_per_domain": 100},
                        "smtp": {"listen": ["0.0.0.0:25"]}}
    text = out.read_text()
    assert "ServerComment=Default SMTP Virtual Server — a label only" in text
    assert "# IIS ServerBindings=:25:" in text
    err = capsys.readouterr().err
    assert "not imported: EnableReverseDnsLookup=FALSE" in err
    assert main(["check", "-c", str(out)]) == 0


def test_smart_host_with_direct_delivery_first(tmp_path) -> None:
    code, imported, out = run_import(tmp_path, HERE / "smarthost.xml")
    assert code == 0
    assert imported == {
        "hostname": "mail.example.local",
        "domains": {"local": {"default": "win2003.example.local"}},
        "delivery": {"smarthost": "smarthost.example.net", "attempt_direct_first": True,
                     "smarthost_for_unknown_domains": True, "max_connections_per_domain": 100},
        "smtp": {"listen": ["0.0.0.0:25"]},
    }
    assert main(["check", "-c", str(out)]) == 0


# What full.xml imports to, key by key.
FULL = {
    "domains": {
        "local": {"default": "example.com", "aliases": ["example.net", "example.org"]},
        "remote": {"partner.example": {"smarthost": "relay.partner.example",
                                       "tls": "require"}},
    },
    "delivery": {
        "retry": ["5m", "10m", "30m", "1h"],  # the server's own, not the service's
        "delay_notification": "4h", "expiration": "1d",
        "local": {"delay_notification": "6h", "expiration": "3d"},  # 360 and 4320 minutes
        "max_hop_count": 30,
        "max_connections": 500, "max_connections_per_domain": 25,
        "messages_per_connection": 50,  # MaxBatchedMessages
        "timeout": "2m",
        "ndr_copy_to": "postmaster@example.com", "masquerade_domain": "example.com",
    },
    "smtp": {
        "listen": ["192.168.10.5:25", "127.0.0.1:2525"],
        "relay": {"allow": ["192.168.10.25/32", "10.1.0.0/16"],
                  "allow_authenticated": False},
        "max_message_size": "10MiB", "max_session_size": "50MiB", "max_recipients": 500,
        "timeout": "5m",
    },
}
AUTH_FLAGS_LINE = ("not imported: AuthFlags=AuthBasic | AuthAnonymous — AUTH used Windows "
                   "accounts: add users with `mailroot passwd USER` and set "
                   "smtp.auth.users_file (AUTH PLAIN/LOGIN only)")


def test_aliases_remote_domain_retries_limits_and_relay_list(tmp_path, capsys) -> None:
    code, imported, out = run_import(tmp_path, HERE / "full.xml")
    assert code == 0, capsys.readouterr().err
    assert imported == FULL
    err = capsys.readouterr().err
    assert "not imported: AllowVerify=TRUE — VRFY is never offered" in err
    assert AUTH_FLAGS_LINE in err.splitlines()
    assert "--server 2" in err
    assert "AllowVerify=TRUE — VRFY is never offered" in out.read_text()
    assert main(["check", "-c", str(out)]) == 0


def test_dry_run_prints_the_config_and_the_report_and_writes_nothing(
        tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # where ./mailroot.yaml, the default output, would go
    assert main(["import-iis", str(HERE / "full.xml"), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out) == FULL
    assert "#   AllowVerify=TRUE — VRFY is never offered" in out  # the report in the header
    assert "not imported: AllowVerify=TRUE — VRFY is never offered" in err
    assert AUTH_FLAGS_LINE in err.splitlines()
    assert "(dry run, nothing written)" in err
    assert list(work.iterdir()) == []
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert main(["check", "-c", str(printed)]) == 0  # what it printed is a valid config


def test_second_virtual_server_by_number(tmp_path) -> None:
    code, imported, _ = run_import(tmp_path, HERE / "full.xml", "--server", "2")
    assert code == 0
    assert imported["smtp"]["listen"] == ["0.0.0.0:587"]
    assert "relay" not in imported["smtp"]  # the other server's relay list is not this one's
    assert main(["import-iis", str(HERE / "full.xml"), "--server", "7", "--dry-run"]) == 2


def test_relay_list_in_the_published_layout() -> None:
    """The bytes a published WMI script writes for "only the list below" with 127.0.0.1."""
    block = bytearray(struct.pack("<20I", R | 24, R | 32, R | 60, R | 68, 1, 76, 0, 0, 1, 0,
                                  2, 1, 4, 0, R | 76, 0, 0, 0, 0, 0xFFFFFFFF))
    block[36] += 1  # one address in the grant list
    block[44] += 1  # one more item in its entry (after the mask)
    decoded = metabase.relay_list((bytes(block) + bytes([127, 0, 0, 1])).hex())
    assert decoded.grant == ["127.0.0.1/32"]


def _deny_list() -> str:
    """"All except the list below": 10.0.0.0/8 in the deny list."""
    return (struct.pack("<6I", R | 24, R | 52, R | 60, R | 68, 1, 76)
            + struct.pack("<2I", 1, 1) + struct.pack("<5I", 2, 2, 1, 0, R | 76)
            + struct.pack("<6I", 0, 0, 0, 0, 0, 0) + bytes([255, 0, 0, 0, 10, 0, 0, 0])).hex()


def _full_list(offset: int, dword: int) -> str:
    """full.xml's relay list (grant 192.168.10.25 and 10.1.0.0/16) with one DWORD changed."""
    raw = metabase.parse(HERE / "full.xml").server().properties["RelayIpList"]
    data = bytearray.fromhex(raw)
    struct.pack_into("<I", data, offset, dword)
    return data.hex().upper()


REFUSED_LISTS = {
    "deny list": (_deny_list().upper(), "mailroot has no deny list"),
    "not hex": ("192.168.10.25/32", "it is not a hex octet string"),
    # offset 16 holds 1 in every published list; what another value means is not known
    "flag at offset 16": (_full_list(16, 2), "the DWORD at offset 16 is 2, not the 1"),
    # the list headers by DNS name are at 0x50 (deny) and 0x58 (grant): one entry in each
    "deny by name": (_full_list(0x50, 1), "it has a deny list by DNS name"),
    "grant by name": (_full_list(0x58, 1), "it has a grant list by DNS name"),
}


@pytest.mark.parametrize("raw,reason", REFUSED_LISTS.values(), ids=REFUSED_LISTS)
def test_a_relay_list_in_doubt_imports_no_relay_list_and_says_so(tmp_path, capsys, raw,
                                                                   reason) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("full.xml", **{
        'RelayIpList="': f'RelayIpList="{raw}" Old="'}))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1
    assert "allow" not in imported["smtp"]["relay"]  # nobody relays by address
    assert imported["smtp"]["relay"]["allow_authenticated"] is False
    err = capsys.readouterr().err
    problem = next(line for line in err.splitlines() if line.startswith("problem: RelayIpList="))
    assert "no client may relay by address until you set smtp.relay.allow" in problem
    assert reason in problem
    assert f"RelayIpList (raw, not imported): {raw}" in out.read_text()  # kept in a comment
    assert main(["check", "-c", str(out)]) == 0


def needing_attention(config: Path) -> list[str]:
    """The lines of the imported config's header under NEEDS ATTENTION."""
    section = config.read_text().split("NEEDS ATTENTION (not imported):\n", 1)[1]
    lines = itertools.takewhile(lambda line: line.startswith("#   "), section.splitlines())
    return [line.removeprefix("#   ") for line in lines]


def test_unknown_route_action_bits_are_a_problem(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("full.xml", **{'RouteAction="6"': 'RouteAction="134217734"'}))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1
    assert "remote" not in imported["domains"]
    assert "bits 0x8000000 are not in IIS's RouteAction table" in capsys.readouterr().err
    assert any("RouteAction=134217734 — bits 0x8000000 are not in IIS's RouteAction table: "
               "what IIS did with them is not known" in line
               for line in needing_attention(out))


def test_not_a_metabase_exits_2_naming_the_line(tmp_path, capsys) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text('<?xml version="1.0"?>\n<configuration>\n<IIsSmtpService Location=/>\n')
    assert main(["import-iis", str(broken), "--dry-run"]) == 2
    assert f"{broken}:3:" in capsys.readouterr().err
    other = tmp_path / "web.config"
    other.write_text('<?xml version="1.0"?>\n<configuration><system.web/></configuration>\n')
    assert main(["import-iis", str(other), "--dry-run"]) == 2
    assert "no IIsSmtpService" in capsys.readouterr().err


def test_an_existing_config_is_not_replaced_without_force(tmp_path) -> None:
    out = tmp_path / "mailroot.yaml"
    out.write_text("hostname: mine.example\n")
    assert main(["import-iis", str(HERE / "default.xml"), "-o", str(out)]) == 2
    assert out.read_text() == "hostname: mine.example\n"
    assert main(["import-iis", str(HERE / "default.xml"), "-o", str(out), "--force"]) == 0
    assert "win2003.example.local" in out.read_text()


def test_a_relay_on_an_imported_config_delivers_to_drop_and_the_smart_host(
        tmp_path, sink) -> None:
    from relay.ops.settings import ConfigFile, set_values
    from tests.conftest import RelayProcess

    hop = sink()
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text(
        "default.xml", **{'SmartHostType="0"': 'SmartHostType="2" SmartHost="[127.0.0.1]"',
                          'RemoteSmtpPort="25"': f'RemoteSmtpPort="{hop.port}"',
                          'ServerBindings=":25:"': 'ServerBindings="127.0.0.1:0:"',
                          "win2003.example.local": "yourdomain.com"}))
    code, imported, out = run_import(tmp_path, source)
    assert code == 0
    assert imported["delivery"] == {"port": hop.port, "smarthost": "127.0.0.1",
                                    "max_connections_per_domain": 100}
    # Where the mailroot lives on this machine is the one thing IIS could not say.
    ConfigFile(out).edit(set_values({"mailroot": str(tmp_path / "mailroot")}))
    relay = RelayProcess(out, tmp_path / "mailroot").start()
    try:
        drop_file(relay.folder("Pickup"), "iis.txt", sample("iis-example-as-written.txt"))
        drop_file(relay.folder("Pickup"), "app.eml", sample("dotnet-smtpclient-pickup.eml"))
        wait_for(lambda: len(relay.files("Drop")) == 2)
        wait_for(lambda: hop.messages)
        assert hop.messages[0].recipients == ["bob@partner.example"]
        dropped = b"".join(p.read_bytes() for p in relay.files("Drop"))
        assert b"X-Receiver: email@yourdomain.com" in dropped
        assert b"X-Receiver: alice@yourdomain.com" in dropped
    finally:
        relay.stop()
    # What the relay ran on: the default install's values, as mailroot's defaults.
    loaded = config_loader.load(out)
    assert loaded.smtp.max_message_size == 2097152  # MaxMessageSize
    assert loaded.smtp.max_session_size == 10485760  # MaxSessionSize
    assert loaded.smtp.max_recipients == 100
    assert [int(d) for d in loaded.delivery.retry] == [900, 1800, 3600, 14400]  # 15,30,60,240
    assert (int(loaded.delivery.delay_notification), int(loaded.delivery.expiration)) == (
        720 * 60, 2880 * 60)
    assert (int(loaded.delivery.local.delay_notification),
            int(loaded.delivery.local.expiration)) == (720 * 60, 2880 * 60)
    assert loaded.delivery.max_hop_count == 15
    assert (loaded.delivery.smarthost.host, loaded.delivery.port) == ("127.0.0.1", hop.port)


def test_outbound_security_and_a_moved_drop_folder_are_reported(tmp_path, capsys) -> None:
    """Server RouteAction 268 = SMTP_SSL | SMTP_SASL | SMTP_AUTH_CLEARTEXT (Outbound Security:
    basic authentication and TLS), as scripts set it for a smart host such as a mail service."""
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("smarthost.xml", **{
        'ServerBindings=":25:"': 'ServerBindings=":25:" RouteAction="268" '
                                 'RouteUserName="relay@example.net" RoutePassword="secret"',
        'DropDirectory="C:\\Inetpub\\mailroot\\Drop"': 'DropDirectory="D:\\Mail\\Drop"'}))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1  # TLS for all outbound mail cannot be said in mailroot
    assert imported["delivery"]["auth"] == {"username": "relay@example.net"}
    text = out.read_text()
    assert "secret" not in text  # a password is never written
    assert "RoutePassword — passwords are never imported" in text
    assert "DropDirectory=D:\\Mail\\Drop" in text
    err = capsys.readouterr().err
    assert "TLS for all outbound mail" in err and "secret" not in err
    assert main(["check", "-c", str(out)]) == 0


# --- Issue 30: real metabases -------------------------------------------------------------

def fragment(server: str = "", domain: str = "", service: bool = True) -> str:
    """A MetaBase.xml with the service's key (unless asked not to), one virtual server and
    one domain, carrying the attributes given."""
    service_key = '<IIsSmtpService\tLocation ="/LM/SmtpSvc"\n\t>\n</IIsSmtpService>\n'
    return ('<?xml version ="1.0"?>\n<configuration xmlns="urn:microsoft-catalog:'
            'XML_Metabase_V64_0">\n<MBProperty>\n' + (service_key if service else "")
            + f'<IIsSmtpServer\tLocation ="/LM/SmtpSvc/1"\n\t\t{server}\n\t>\n</IIsSmtpServer>\n'
            '<IIsSmtpDomain\tLocation ="/LM/SmtpSvc/1/Domain/partner.example"\n'
            f'\t\t{domain}\n\t>\n</IIsSmtpDomain>\n</MBProperty>\n</configuration>\n')


DOMAIN_LINE = fragment().splitlines().index(
    '<IIsSmtpDomain\tLocation ="/LM/SmtpSvc/1/Domain/partner.example"') + 1
DOMAIN = f"IIsSmtpDomain partner.example (line {DOMAIN_LINE})"


def import_text(tmp_path: Path, text: str) -> tuple[metabase.Metabase, iis_import.Imported]:
    source = tmp_path / "MetaBase.xml"
    source.write_text(text)
    mb = metabase.parse(source)
    return mb, iis_import.import_server(mb)


def test_the_import_knows_the_names_of_the_schema_and_no_others() -> None:
    """Every name the import reads or reports is spelled as the schema spells it."""
    on_servers = {name for name, where in metabase.SCHEMA.items() if metabase.SERVER in where}
    on_domains = {name for name, where in metabase.SCHEMA.items() if metabase.DOMAIN in where}
    assert on_servers == iis_import.SERVER_PROPERTIES
    assert set(iis_import.DOMAIN_PROPERTIES) == on_domains


@pytest.mark.parametrize("name", sorted(metabase.SCHEMA))
def test_each_property_is_read_in_the_schemas_spelling_and_in_any_case(tmp_path, name) -> None:
    where = metabase.SCHEMA[name]
    outcomes = []
    for spelled in (name, name.lower(), name.upper(), name.swapcase()):
        attribute = f'{spelled}="1"'
        mb, result = import_text(tmp_path, fragment(
            attribute if metabase.SERVER in where else "",
            attribute if metabase.DOMAIN in where else ""))
        for key in (mb.servers[0], *mb.domains):
            assert spelled not in key.properties or spelled == name
        assert name in {**mb.servers[0].properties, **mb.domains[0].properties}
        outcomes.append((result.values, result.problems, result.not_imported))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    report = "\n".join(outcomes[0][1] + outcomes[0][2])
    assert "no mailroot setting" not in report
    assert "does not know" not in report


def mixed_case(text: str) -> str:
    """Every attribute name of a MetaBase.xml, and the Custom property's name, in other case."""
    text = re.sub(r"(?m)^(\s+)([A-Za-z]+)(\s*=)", lambda m: m[1] + m[2].swapcase() + m[3], text)
    return text.replace('"AuthFlags"', '"authflags"')


def test_a_metabase_written_in_other_case_imports_the_same(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(mixed_case((HERE / "full.xml").read_text()))
    assert "sMTPrEMOTEndreXPIREmINUTES" in source.read_text()
    code, imported, _ = run_import(tmp_path, source)
    assert code == 0, capsys.readouterr().err
    assert imported == FULL
    assert AUTH_FLAGS_LINE in capsys.readouterr().err.splitlines()


def test_the_remote_expiration_as_iis_spells_it(tmp_path, capsys) -> None:
    """7220 minutes: mail IIS kept for 5 days is kept for 5 days, not bounced after 2."""
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("default.xml", **{
        'SmtpRemoteNDRExpireMinutes="2880"': 'SmtpRemoteNDRExpireMinutes="7220"',
        'SmtpLocalNDRExpireMinutes="2880"': 'SmtpLocalNDRExpireMinutes="4320"'}))
    code, _, out = run_import(tmp_path, source)
    assert code == 0
    loaded = config_loader.load(out)
    assert int(loaded.delivery.expiration) == 7220 * 60
    assert int(loaded.delivery.local.expiration) == 4320 * 60
    assert "SmtpRemoteNDRExpireMinutes" not in capsys.readouterr().err  # not "not imported"


def test_a_file_with_only_the_virtual_server_imports_with_the_service_defaults(
        tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment('ServerBindings="127.0.0.1:2526:" DefaultDomain="example.com"',
                               'RouteAction="16"', service=False))
    code, imported, out = run_import(tmp_path, source)
    assert code == 0, capsys.readouterr().err
    assert imported == {"domains": {"local": {"default": "example.com",
                                              "aliases": ["partner.example"]}},
                        "smtp": {"listen": ["127.0.0.1:2526"]}}
    assert "IIsSmtpService — not in this file: the service's defaults apply" in out.read_text()
    assert main(["check", "-c", str(out)]) == 0


CP1252 = metabase_text("default.xml", **{
    'ServerComment="Default SMTP Virtual Server"': 'ServerComment="Serveur SMTP par défaut"'})


def test_a_windows_1252_file_gets_the_encoding_and_how_to_convert_it(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_bytes(CP1252.encode("cp1252"))
    code, _, out = run_import(tmp_path, source)
    assert code == 2 and not out.exists()
    line = CP1252.splitlines().index('\t\tServerComment="Serveur SMTP par défaut"') + 1
    err = capsys.readouterr().err
    assert f"{source}:{line}: the file is not in the encoding it declares (utf-8): byte 0xE9" \
        in err
    assert f"iconv -f cp1252 -t utf-8 {source} > MetaBase-utf8.xml" in err
    assert "Traceback" not in err
    converted = tmp_path / "MetaBase-utf8.xml"  # what the command it gives writes
    converted.write_bytes(source.read_bytes().decode("cp1252").encode("utf-8"))
    assert run_import(tmp_path, converted)[0] == 0


def test_a_file_that_declares_windows_1252_is_read_in_it(tmp_path) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_bytes(CP1252.replace('<?xml version ="1.0"?>', '<?xml version ="1.0" '
                                      'encoding="windows-1252"?>').encode("cp1252"))
    code, _, out = run_import(tmp_path, source)
    assert code == 0
    assert "ServerComment=Serveur SMTP par défaut — a label only" in out.read_text()


def test_authflags_without_anonymous_is_listed_once(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("default.xml", **{'AuthFlags="AuthAnonymous"':
                                                      'AuthFlags="2"'}))
    code, _, out = run_import(tmp_path, source)
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "AuthFlags" in line]
    assert lines == ["problem: AuthFlags=2 — IIS required every client to authenticate; "
                     "mailroot takes mail for its local domains without AUTH. AUTH used "
                     "Windows accounts: add users with `mailroot passwd USER` and set "
                     "smtp.auth.users_file (AUTH PLAIN/LOGIN only)"]
    assert out.read_text().count("AuthFlags=2") == 1


def test_an_empty_relay_list_needs_attention_and_lets_nobody_relay(tmp_path, capsys) -> None:
    """The Windows Server 2022 fix writes RelayIpList="": IIS lets every client relay."""
    source = tmp_path / "MetaBase.xml"
    source.write_text(re.sub(r'RelayIpList="[0-9A-F]*"', 'RelayIpList=""',
                             (HERE / "default.xml").read_text()))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1
    assert "relay" not in imported["smtp"]  # nobody relays by address
    problem = ('RelayIpList="" — empty: IIS reads it as "all except the list below" with no '
               'one listed, so every client could relay; imported as the safe choice, nobody '
               'relays by address: list the clients that must in smtp.relay.allow')
    assert f"problem: {problem}" in capsys.readouterr().err.splitlines()
    assert problem in needing_attention(out)
    assert config_loader.load(out).smtp.relay.allow == []


# What a remote domain with one bit of the table imports to, for the bits that map.
REMOTE = {"tls": "may"}
MAPPED_BITS = {
    "SMTP_SMARTHOST": {"remote": {"partner.example": {**REMOTE, "smarthost": "relay.example"}}},
    "SMTP_SSL": {"remote": {"partner.example": {"tls": "require"}}},
    "SMTP_SASL": {"remote": {"partner.example": {**REMOTE, "auth": {"username": "turn"}}}},
    "SMTP_AUTH_CLEARTEXT": {"remote": {"partner.example": {**REMOTE,
                                                           "auth": {"username": "turn"}}}},
    "SMTP_ALIAS": {"local": {"default": "example.com", "aliases": ["partner.example"]}},
    "SMTP_DEFAULT": {"local": {"default": "partner.example"}},
}


@pytest.mark.parametrize("bit", ROUTE_BITS, ids=lambda bit: bit.name)
def test_each_route_action_bit_of_a_domain(tmp_path, capsys, bit) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment('DefaultDomain="example.com"', f'RouteAction="{bit.value}" '
                               'RouteActionString="relay.example" RouteUserName="turn"'))
    code, imported, out = run_import(tmp_path, source)
    err = capsys.readouterr().err
    if bit.name in MAPPED_BITS:
        assert code == 0, err
        assert imported["domains"] == {"local": {"default": "example.com"},
                                       **MAPPED_BITS[bit.name]}
    else:
        assert code == 1
        said = (f"{DOMAIN} RouteAction={bit.value} — {bit.name} (0x{bit.value:x}): IIS "
                f"{bit.iis}; {bit.mailroot}")
        assert f"problem: {said}" in err.splitlines()
        assert said in needing_attention(out)
        if bit.value & DIVERTING:  # where its mail went can't be said: not imported
            assert "remote" not in imported["domains"]
        else:
            assert imported["domains"]["remote"] == {"partner.example": REMOTE}
    assert main(["check", "-c", str(out)]) == 0


def test_a_knowledge_base_turn_domain_needs_attention(tmp_path, capsys) -> None:
    """KB 183476's authenticated TURN domain: RouteAction 514 and AuthTurnList."""
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment('DefaultDomain="example.com"',
                               'RouteAction="514" AuthTURNList="TESTSERVER"'))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1
    assert "remote" not in imported["domains"]  # mail for it is not sent to a smart host ''
    err = capsys.readouterr().err
    assert "bad address" not in err and "RouteActionString" not in err
    label = f"problem: {DOMAIN}"
    assert (f"{label} AuthTurnList=TESTSERVER — IIS let these accounts collect the domain's "
            "queued mail with TURN/ATRN (KB 183476); mailroot has no TURN") in err.splitlines()
    assert f"{label} RouteAction=514 — SMTP_ETRN_CMD (0x200): IIS held the domain's mail" in err
    assert "SMTP_SMARTHOST" not in err.replace("with SMTP_SMARTHOST, KB 183476", "")
    assert (f"{DOMAIN} AuthTurnList=TESTSERVER — IIS let these accounts collect the domain's "
            "queued mail with TURN/ATRN (KB 183476); mailroot has no TURN"
            ) in needing_attention(out)


def test_a_domain_property_the_import_does_not_know_needs_attention(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment('DefaultDomain="example.com"',
                               'RouteAction="0" SmtpNewerOption="7"'))
    code, imported, out = run_import(tmp_path, source)
    assert code == 1
    assert (f"problem: {DOMAIN} SmtpNewerOption=7 — a domain property the import does not "
            "know: what IIS did with it is not known to mailroot"
            ) in capsys.readouterr().err.splitlines()
    assert f"{DOMAIN} SmtpNewerOption=7 — a domain property the import does not know: what " \
        "IIS did with it is not known to mailroot" in needing_attention(out)


# SmartHostType (Microsoft's SmartHostType page): 0 the smart host is not used; 1 DNS first,
# the smart host when DNS can't find the recipients' domain; 2 always, without DNS.
SMART_HOST_TYPES = {
    "0": {"found.test": "mx", "broken.test": "waits", "missing.test": "fails"},
    "1": {"found.test": "mx", "broken.test": "smart host", "missing.test": "smart host"},
    "2": {"found.test": "smart host", "broken.test": "smart host", "missing.test": "smart host"},
}


OUTCOME = {"mx": "delivered", "smart host": "delivered", "waits": "deferred",
           "fails": "failed"}


def attempted(relay) -> dict[str, str]:
    """What the first delivery attempt came to for each recipient, from the event log."""
    return {rcpt: event["event"] for event in relay.events()
            if event["event"] in ("delivered", "deferred", "failed") for rcpt in event["to"]}


def arrived(mx, smart) -> dict[str, str]:
    """Each recipient the next hops took, and which took it."""
    return {rcpt: where for where, hop in (("mx", mx), ("smart host", smart))
            for message in hop.messages for rcpt in message.recipients}


def route_json(config: Path, address: str, capsys) -> tuple[int, dict]:
    code = main(["route", "-c", str(config), "--json", address])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", SMART_HOST_TYPES)
def test_smart_host_type_is_imported_and_followed_by_route_and_delivery(
        tmp_path, capsys, dns_server, sink, kind) -> None:
    """found.test has an MX host, broken.test answers SERVFAIL, missing.test is NXDOMAIN; the
    MX host listens on 127.0.0.1, the smart host on 127.0.0.2, on RemoteSmtpPort both."""
    from relay.ops.settings import ConfigFile, set_values
    from tests.conftest import RelayProcess

    mx = sink()
    smart = sink(host="127.0.0.2", port=mx.port)
    dns_server.mx("found.test", (10, "mx.found.test"))
    dns_server.a("mx.found.test", "127.0.0.1")
    dns_server.servfail("broken.test")
    source = tmp_path / "MetaBase.xml"
    source.write_text(metabase_text("default.xml", **{
        'SmartHostType="0"': f'SmartHostType="{kind}" SmartHost="[127.0.0.2]"',
        'RemoteSmtpPort="25"': f'RemoteSmtpPort="{mx.port}"',
        'ServerBindings=":25:"': 'ServerBindings="127.0.0.1:0:"',
        "win2003.example.local": "yourdomain.com"}))
    code, imported, out = run_import(tmp_path, source)
    assert code == 0, capsys.readouterr().err
    expected = {"0": {}, "1": {"smarthost": "127.0.0.2", "attempt_direct_first": True,
                               "smarthost_for_unknown_domains": True},
                "2": {"smarthost": "127.0.0.2"}}[kind]
    assert {k: v for k, v in imported["delivery"].items()
            if k.startswith(("smarthost", "attempt"))} == expected
    capsys.readouterr()
    # Where the mailroot lives and which DNS servers to ask: not in the metabase.
    ConfigFile(out).edit(set_values({
        "mailroot": str(tmp_path / "mailroot"), "dns.nameservers": "[127.0.0.1]",
        "dns.port": str(dns_server.port), "dns.timeout": "1s"}))

    for domain, fate in SMART_HOST_TYPES[kind].items():
        code, said = route_json(out, f"someone@{domain}", capsys)
        if fate == "smart host":
            assert (code, said["destination"].split(" (")[0]) == (
                0, f"smart host 127.0.0.2:{mx.port}"), said
        elif fate == "mx":
            assert (code, said["destination"]) == (0, "MX mx.found.test (preference 10)"), said
        else:
            assert code == 1
            assert said["fails"].startswith("4.4.3" if fate == "waits" else "5.1.2"), said

    delivered = {f"to@{domain}": fate for domain, fate in SMART_HOST_TYPES[kind].items()
                 if fate in ("mx", "smart host")}
    relay = RelayProcess(out, tmp_path / "mailroot").start()
    try:
        drop_file(relay.folder("Pickup"), "three.eml", "".join(
            ["X-Sender: app@yourdomain.com\r\n"]
            + [f"X-Receiver: to@{domain}\r\n" for domain in SMART_HOST_TYPES[kind]]
            + ["From: app@yourdomain.com\r\nSubject: smart host type\r\n\r\nbody\r\n"]
        ).encode())
        outcomes = wait_for(lambda: len(attempted(relay)) == 3 and attempted(relay))
    finally:
        relay.stop()
    assert outcomes == {f"to@{domain}": OUTCOME[fate]
                        for domain, fate in SMART_HOST_TYPES[kind].items()}
    assert arrived(mx, smart) == delivered


@pytest.mark.parametrize("name", sorted(metabase.SCHEMA))
def test_a_bad_value_of_each_property_is_named_never_a_traceback(tmp_path, capsys, name) -> None:
    where = metabase.SCHEMA[name]
    attribute = f'{name}="x!"'
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment(attribute if metabase.SERVER in where else "",
                               attribute if metabase.DOMAIN in where else ""))
    code, _, out = run_import(tmp_path, source)
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err
    said = err + out.read_text()  # listed, or written with the property named beside it
    if "Password" in name:
        assert f"{name} — passwords are never imported" in said and "x!" not in said
    else:
        assert f"{name}=x!" in said
    assert main(["check", "-c", str(out)]) == 0


def test_a_property_set_twice_in_different_case_is_refused_naming_it(tmp_path, capsys) -> None:
    source = tmp_path / "MetaBase.xml"
    source.write_text(fragment('SmtpRemoteNDRExpireMinutes="7220" '
                               'SmtpRemoteNdrExpireMinutes="2880"'))
    code, _, out = run_import(tmp_path, source)
    assert code == 2 and not out.exists()
    line = fragment().splitlines().index('<IIsSmtpServer\tLocation ="/LM/SmtpSvc/1"') + 1
    assert (f"{source}:{line}: SmtpRemoteNDRExpireMinutes is set twice on this key (as "
            "SmtpRemoteNDRExpireMinutes and SmtpRemoteNdrExpireMinutes): property names are "
            "not case-sensitive") in capsys.readouterr().err
