"""A Badmail reason in one short word an operator can filter on: DNS, 5xx, expired, too big..."""

from __future__ import annotations

import re

CLASSES = (  # (class, words in the reason that mean it), checked in this order
    ("expired", ("expired", "expiration", "gave up after")),
    ("too big", ("size limit", "too large", "too big", "5.3.4")),
    ("loop", ("hop count",)),
    ("no rcpt", ("no recipients", "no recipient")),
    ("DNS", ("dns", "mx record", "mx lookup", "nxdomain", "servfail", "no such domain",
             "does not resolve", "null mx")),
    ("TLS", ("tls", "certificate")),
    ("damaged", ("damaged", "checksum", "quarantined")),
    ("bad file", ("nul bytes", "binary", "the file is empty", "the message is empty",
                  "header", "not a regular file", "symbolic link", "a directory", "a fifo",
                  "hard links", "cannot be parsed", "bad sender address",
                  "bad recipient address", "not a message", "was not opened",
                  "recipients, more")),
)
REPLY_CODE = re.compile(r"\b([45])\d\d\b|\b([45])\.\d{1,3}\.\d{1,3}\b")


def reason_class(reason: str) -> str:
    """The class of a Badmail reason, for its table column, the filter and the index ("" for
    no reason)."""
    if not reason:
        return ""
    text = reason.lower()
    for name, words in CLASSES:
        if any(word in text for word in words):
            return name
    match = REPLY_CODE.search(reason)
    if match:
        return f"{match[1] or match[2]}xx"
    return "other"


def reply_text(reason: str) -> str:
    """The remote reply in a delivery failure reason ("550 5.1.1 no such user"), or the
    reason itself when it holds none: what a narrow cell should show first."""
    head, sep, tail = reason.partition(": ")
    if sep and head.startswith(("delivery failed", "delivery time expired", "permanent")):
        return re.sub(r"<[^>]*>:?\s*", "", tail, count=1)  # the recipient: in its own column
    return reason
