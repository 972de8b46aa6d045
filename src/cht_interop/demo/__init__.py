"""``cht-interop demo``: the LTFU story end to end on loopback, timed (see docs/client.md)."""
