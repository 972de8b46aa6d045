"""OpenHIM: the mediator's registration, heartbeat and console-set config (``docs/openhim.md``)."""
