"""cht-interop: the LTFU interoperability layer between FHIR R4 health systems and the CHT."""

__version__ = "0.1.0"
