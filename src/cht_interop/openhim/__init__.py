"""OpenHIM mediator registration and configurator (later issue)."""
