"""Write the ``interop_follow_up`` XLSForm (the CHW's LTFU follow-up app form).

The XLSForm is the source of the shipped form; cht-conf ``convert-app-forms`` turns it into the
XForm XML that is committed beside it. Field names follow docs/cht-contract.md §4.

Run: ``.venv/bin/python tests/cht/harness/make_form_xlsx.py`` (rewrites the .xlsx in place), then
``tests/cht/harness/convert-forms`` to regenerate the XML.
"""

from __future__ import annotations

import sys
from pathlib import Path

from openpyxl import Workbook

FORM_DIR = Path(__file__).resolve().parents[3] / "src" / "cht_interop" / "cht" / "config" / "forms" / "app"

SURVEY_HEADER = (
    "type",
    "name",
    "label::en",
    "required",
    "relevant",
    "appearance",
    "calculation",
    "read_only",
)
SURVEY = [
    # Task inputs: filled from the task's action content; shown only when opened without a task.
    ("begin group", "inputs", "Inputs", "", "./source = 'user'", "field-list", "", ""),
    ("hidden", "source", "Source", "", "", "", "", ""),
    ("begin group", "contact", "Patient", "", "", "", "", ""),
    ("string", "_id", "Which patient are you following up?", "yes", "", "select-contact type-person", "", ""),
    ("string", "name", "Patient name", "", "", "hidden", "", ""),
    ("end group", "", "", "", "", "", "", ""),
    ("end group", "", "", "", "", "", "", ""),
    # The links the report carries (so it attaches to the patient and resolves the task). The task's
    # content binds source_id and service_request_id here directly: one element per content key, as
    # the CHT binds a key to a root child or an inputs child and warns when it finds both.
    ("hidden", "source_id", "Source ID", "", "", "", "", ""),
    ("hidden", "service_request_id", "Service request ID", "", "", "", "", ""),
    ("calculate", "patient_uuid", "", "", "", "", "../inputs/contact/_id", ""),
    ("calculate", "patient_id", "", "", "", "", "../inputs/contact/_id", ""),
    ("calculate", "patient_name", "", "", "", "", "../inputs/contact/name", ""),
    # What the CHW reports.
    ("select_one outcome", "outcome", "What was the outcome of the follow-up?", "yes", "", "", "", ""),
    ("select_one method", "method", "How was the follow-up done?", "yes", "", "", "", ""),
    ("text", "notes", "Notes", "", "", "multiline", "", ""),
]

CHOICES_HEADER = ("list_name", "name", "label::en")
CHOICES = [
    ("outcome", "returned_to_care", "Found and returning to care"),
    ("outcome", "refused", "Found and refused"),
    ("outcome", "not_located", "Not located"),
    ("outcome", "moved_away", "Moved away"),
    ("outcome", "died", "Died"),
    ("outcome", "other", "Other"),
    ("method", "visit", "Home visit"),
    ("method", "phone", "Phone call"),
    ("method", "sms", "SMS"),
]

SETTINGS_HEADER = ("form_title", "form_id", "version", "default_language", "style")
SETTINGS = [("LTFU follow-up", "interop_follow_up", "2026-11-25", "en", "")]


def build(path: Path) -> None:
    book = Workbook()
    for title, header, rows in (
        ("survey", SURVEY_HEADER, SURVEY),
        ("choices", CHOICES_HEADER, CHOICES),
        ("settings", SETTINGS_HEADER, SETTINGS),
    ):
        sheet = book.active if title == "survey" else book.create_sheet()
        assert sheet is not None
        sheet.title = title
        sheet.append(header)
        for row in rows:
            sheet.append(row)
    book.save(path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FORM_DIR / "interop_follow_up.xlsx"
    build(target)
    print(target)
