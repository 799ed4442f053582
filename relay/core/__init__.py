"""What every process of the relay shares: the store and its commit protocol (store, fileops,
claims, leftovers, spares), the config, messages and addresses, the router and the intake
that commits a new message, DKIM signing, bounces, the event log, and a child process's life.

Run by every process. Imports nothing of the relay outside relay.core.
"""
