"""The Pickup taker process (`python -m relay.pickup`): watches Pickup/, takes each file
exactly once (tmp/pickup/), and commits it through the intake, or sets it aside in Badmail/
with a `.BAD` saying why. The single-process relay runs the same PickupWatcher.

Imports relay.core only.
"""
