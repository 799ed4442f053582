"""Words for bulk actions: the question that states their scope, and the line that accounts for
every message once they ran. No Textual here, so both are plain functions to test."""

from __future__ import annotations

from collections import Counter

from relay.ops.actions import ActionResult

VERBS = {  # action -> (verb, preposition, past tense)
    "requeue": ("Requeue", "from", "requeued"),
    "retry": ("Retry now", "in", "due now"),
    "hold": ("Hold", "in", "held"),
    "release": ("Release", "from", "released"),
    "delete": ("Delete", "from", "deleted"),
    "undelete": ("Undelete", "from", "undeleted"),
}

WHY = (  # the start of an API problem -> how the result line says it, of one and of more
    ("busy", ("was being delivered and was skipped", "were being delivered and were skipped")),
    ("not found", ("was no longer there", "were no longer there")),
)


def plural(count: int, word: str = "message") -> str:
    return f"{count:,} {word}{'s' if count != 1 else ''}"


def question(action: str, count: int, folder: str, domains: Counter[str] | None = None) -> str:
    """"Hold 1,812 messages in Queue (1,809 to greylist.test, 3 to b.example)?" """
    verb, prep, _ = VERBS[action]
    text = f"{verb} {plural(count)} {prep} {folder}"
    if domains and count > 1:
        top = domains.most_common(3)
        parts = [f"{n:,} to {domain}" for domain, n in top]
        rest = len(domains) - len(top)
        if rest:
            parts.append(f"{rest:,} more domain{'s' if rest != 1 else ''}")
        text += f" ({', '.join(parts)})"
    return text + "?"


def requeue_warning(count: int, permanent: list[str]) -> str:
    """What the requeue question adds when messages were refused permanently (their 5xx
    replies): requeued, they will most likely be refused again, and their senders told again."""
    if not permanent:
        return ""
    reply, _ = Counter(permanent).most_common(1)[0]
    if count == 1:
        return f"\n{reply}: requeue will most likely fail again and send another NDR."
    return (f"\n{len(permanent):,} of them failed permanently ({reply}"
            f"{', …' if len(set(permanent)) > 1 else ''}): requeued, they will most likely "
            "fail again and each send another NDR.")


def why(problem: str, count: int) -> str:
    """What happened to `count` messages that met this problem, in words that agree."""
    one, more = next((words for start, words in WHY if problem.startswith(start)),
                     (f"was skipped ({problem})", f"were skipped ({problem})"))
    return one if count == 1 else more


def result_line(action: str, result: ActionResult, asked: int, undo: str = "") -> str:
    """"held 1,810; 2 were being delivered and were skipped", "requeued 0; 1 was skipped
    (wrong state: ...)" — every message accounted for, in words that agree; those a cancel
    left untouched are counted too."""
    parts = [f"{VERBS[action][2]} {len(result.done):,}"]
    kinds = Counter(next((start for start, _ in WHY if p.startswith(start)), p)
                    for p in result.problems.values())
    for kind, count in kinds.most_common():
        parts.append(f"{count:,} {why(kind, count)}")
    left = asked - len(result.done) - len(result.problems)
    if left:
        parts.append(f"{left:,} not done (canceled)")
    line = "; ".join(parts)
    return f"{line}. {undo}" if undo and result.done else line
