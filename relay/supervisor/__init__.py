"""`mailroot serve`, run by the supervisor process: takes the relay lock, binds the SMTP
sockets, starts a child per service (receivers, the Pickup taker, the queue manager) and
restarts any that dies, holds the shared Anvil, hands config changes to every child, serves
/metrics and talks to systemd. With `smtp.workers: 1` the same services run in this one
process instead (single.Relay).

May import the process packages (to run them in one process) and relay.core.
"""
