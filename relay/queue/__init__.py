"""The queue manager process (`python -m relay.queue`): the schedule of Queue/ (which entry
is due when), delivery over SMTP (the client, MX lookups), retries on the Delivery schedule,
delay notices and bounces (a `.BAD` in Badmail/ and a report to the sender), and the
recovery pass at its start. The single-process relay runs the same QueueManager service.

Imports relay.core only.
"""
