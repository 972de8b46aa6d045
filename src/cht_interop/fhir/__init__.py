"""The embedded FHIR R4 server and the FhirClient protocol the rest of the system uses."""
