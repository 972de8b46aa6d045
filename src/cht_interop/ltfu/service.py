"""The LTFU mediator, assembled: one ``LtfuService`` per process, made of one object per step.

Each step is its own module (the map is in ``cht_interop.ltfu``'s docstring); this one only wires
them. The composition root (``cht_interop.app.build_services``) builds one per process and hands
it to the API routes (through ``Services.ltfu``) and to the outbox jobs, so that both share the
same start lock, requester cache and group-commit batches.
"""

from __future__ import annotations

from cht_interop.db import Database
from cht_interop.fhir.client import FhirClient
from cht_interop.ltfu.duplicates import DuplicateCheck
from cht_interop.ltfu.encounters import EncounterReports
from cht_interop.ltfu.intake import Intake
from cht_interop.ltfu.lifecycle import Lifecycle
from cht_interop.ltfu.patients import Patients
from cht_interop.ltfu.requesters import Requesters
from cht_interop.ltfu.staged_lists import StagedLists
from cht_interop.ltfu.writes import LtfuWrites
from cht_interop.settings import Settings


class LtfuService:
    """The rooms of the LTFU workflow, wired once. One per process: the duplicate check's lock,
    the requester cache and the group-commit batches live in it, shared by API and outbox jobs."""

    def __init__(self, fhir: FhirClient, settings: Settings, db: Database) -> None:
        self.fhir = fhir
        self.settings = settings
        self.writes = LtfuWrites(fhir, settings, db)
        self.requesters = Requesters(fhir, settings)
        self.patients = Patients(fhir)
        self.duplicates = DuplicateCheck(fhir, self.writes, self.requesters, self.patients)
        self.staged_lists = StagedLists(settings, self.writes, self.duplicates, self.requesters)
        self.intake = Intake(settings, self.writes, self.duplicates, self.staged_lists)
        self.lifecycle = Lifecycle(self.writes, self.patients)
        self.encounters = EncounterReports(self.writes)
