"""mailroot: a mail relay built around the IIS mailroot folders.

A package per process, over a shared core (the layers are checked by `lint-imports`, with the
contracts in pyproject.toml):

    cli         the `mailroot` command
    ops         the operator API: queries, actions, config edits, route, probe (commands, console)
    supervisor  `mailroot serve`: the supervisor and its children, or the relay in one process
    receiver    a receiver process: SMTP sessions, each message committed before its 250
    pickup      the Pickup taker process: files from Pickup/ committed through the intake
    queue       the queue manager process: the schedule, delivery, retries, bounces, recovery
    core        what every process shares: the store, config, messages, intake, events
"""
