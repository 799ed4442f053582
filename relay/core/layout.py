"""The mailroot's layout: its folders, the marker that commits an entry in each, and the
kinds of file the relay keeps in tmp/ (docs/store-protocol.md)."""

PICKUP, QUEUE, DROP, BADMAIL, HOLD = "Pickup", "Queue", "Drop", "Badmail", "Hold"
TRASH = "Trash"
FOLDERS = (PICKUP, QUEUE, DROP, BADMAIL, HOLD)
WORK_DIRS = ("tmp", "log", TRASH)
MARKER = {QUEUE: ".env", HOLD: ".env", BADMAIL: ".BAD", DROP: ".eml", TRASH: ".env"}
MOVE_FOLDERS = (QUEUE, HOLD, BADMAIL, TRASH)  # a message moves between these (Drop is final)

DELIVERED = ".delivered"  # in Queue/: a delivered message's envelope, until its files are gone
SPENT = ".spent"  # in tmp/: a delivered message's file, until its claim is closed
SPARE = "spare-"  # in tmp/, spare-NN: a zeroed-out file kept for a commit to write into again
READY = ".ready"  # in tmp/: a file made ahead (new, or a spare) for a commit to write into
