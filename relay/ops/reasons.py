"""The one classifier of Badmail reasons: a short name an operator can filter on (DNS, 5.1.1,
expired, too-big...), the same in the console's class column, `mailroot summary` and the
`class:` filter term. Each name is one word, so typing it as a plain filter word finds it too."""

from __future__ import annotations

import re

CLASSES = (  # (class, words in the reason that mean it), checked in this order
    ("expired", ("expired", "expiration", "gave up after")),
    ("too-big", ("size limit", "too large", "too big", "5.3.4")),
    ("loop", ("hop count",)),
    ("no-rcpt", ("no recipients", "no recipient")),
    ("DNS", ("dns", "mx record", "mx lookup", "nxdomain", "servfail", "no such domain",
             "does not resolve", "null mx")),
    ("TLS", ("tls", "certificate")),
    ("damaged", ("damaged", "checksum", "quarantined")),
    ("bad-file", ("nul bytes", "binary", "the file is empty", "the message is empty",
                  "header", "not a regular file", "symbolic link", "a directory", "a fifo",
                  "hard links", "cannot be parsed", "bad sender address",
                  "bad recipient address", "not a message", "was not opened",
                  "recipients, more")),
)
STATUS = re.compile(r"\b([45]\.\d{1,3}\.\d{1,3})\b")  # an enhanced status code (RFC 3463)
REPLY_CODE = re.compile(r"\b([45])\d\d\b")


def reason_class(reason: str) -> str:
    """The class of a Badmail reason ("" for no reason): a named class, else the remote
    server's enhanced status (5.1.1), else its reply code's class (5xx), else "other"."""
    if not reason:
        return ""
    text = reason.lower()
    for name, words in CLASSES:
        if any(word in text for word in words):
            return name
    status = STATUS.search(reason)
    if status:
        return status[1]
    code = REPLY_CODE.search(reason)
    return f"{code[1]}xx" if code else "other"


def permanent_reply(reason: str) -> str:
    """The remote server's permanent (5xx) refusal in a Badmail reason, "" when the failure
    was of another kind: a message refused so is most likely refused again if requeued."""
    reply = reply_text(reason)
    return reply if REPLY_CODE.match(reply) and reply.startswith("5") else ""


def reply_text(reason: str) -> str:
    """The remote reply in a delivery failure reason ("550 5.1.1 no such user"), or the
    reason itself when it holds none: what a narrow cell should show first."""
    head, sep, tail = reason.partition(": ")
    if sep and head.startswith(("delivery failed", "delivery time expired", "permanent")):
        return re.sub(r"<[^>]*>:?\s*", "", tail, count=1)  # the recipient: in its own column
    return reason
