"""A receiver process (`python -m relay.receiver`): the SMTP listener, its sessions (what
RCPT TO is answered, AUTH, limits asked of the Anvil), each message committed to Drop/Queue
by the intake before its 250. The single-process relay runs the same Receiver service.

Imports relay.core only.
"""
