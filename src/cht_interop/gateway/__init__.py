"""The built-in gateway: client authentication (hashed passwords) in front of /fhir and /mediator."""
