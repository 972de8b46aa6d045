"""R4 rest-hook Subscriptions: criteria validated and indexed on write, matched on every write.

``criteria`` validates a Subscription (HAPI's 422 rules) and parses its criteria with the search
parser; ``index`` keeps the table of active Subscriptions and their criteria tokens; ``matching``
finds the Subscriptions a write matches and builds their notification jobs. ``delivery`` (the
outbox handler that sends the rest-hook) lives beside them.
"""
