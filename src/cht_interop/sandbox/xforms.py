"""``POST /api/v1/forms/validate``: is this XForm one the CHT can turn into a web form?

The CHT runs the enketo XSL transforms (xsltproc) over the XML and answers 400 with the
transformer's error when they fail. The sandbox has no enketo: it checks what makes those
transforms fail on real forms (XML that does not parse, a root that is not an XHTML ``html``, no
XForms ``model`` with an ``instance``). Entity declarations are refused outright, as the CHT
refuses to let a form reach files or the network through xsltproc.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from xml.parsers import expat

_XHTML = "{http://www.w3.org/1999/xhtml}"
_XFORMS = "{http://www.w3.org/2002/xforms}"


class InvalidXForm(ValueError):
    """Why the form cannot be transformed (the CHT's ``{error: message}``)."""


def _refuse_entities(*_args: object) -> None:
    raise InvalidXForm("Error transforming xml: entity declarations are not allowed")


def _parse(xml: str) -> ElementTree.Element:
    checker = expat.ParserCreate()
    checker.EntityDeclHandler = _refuse_entities
    checker.UnparsedEntityDeclHandler = _refuse_entities
    try:
        checker.Parse(xml, True)
        return ElementTree.fromstring(xml)  # no entities declared: nothing to expand
    except (ElementTree.ParseError, expat.ExpatError) as exc:
        raise InvalidXForm(f"Error transforming xml: {exc}") from None


def validate_xform(xml: str) -> None:
    """Raises :class:`InvalidXForm` for XML the CHT's transform would not turn into a form."""
    if not xml.strip():
        raise InvalidXForm("Error transforming xml: the form is empty")
    root = _parse(xml)
    if root.tag != f"{_XHTML}html":
        raise InvalidXForm("Error transforming xml: the root element is not an XHTML <html>")
    model = root.find(f"{_XHTML}head/{_XFORMS}model")
    if model is None or model.find(f"{_XFORMS}instance") is None:
        raise InvalidXForm("Error transforming xml: no XForms <model> with an <instance> in <h:head>")
    if root.find(f"{_XHTML}body") is None:
        raise InvalidXForm("Error transforming xml: no <h:body>")
