"""Pure: the URLs of documentation pages, from a base URL (the ``docs_url`` setting).

A leaf module (it imports nothing of querywatch) so that what emits ids, the alert channels
included, can link to their pages without importing the registry that reads them
(querywatch.docs).

>>> base_url("", "0.0.0.0", 9000)
'http://127.0.0.1:9000/docs/'
>>> reference_url("verdicts/healthy", "https://qw.example.com/docs")
'https://qw.example.com/docs/reference/verdicts/healthy/'
>>> check_link("cpu cores")
'http://127.0.0.1:8080/docs/install/#cpu-cores'
"""

from __future__ import annotations

import re

DOCS_PATH = "/docs/"  # where `querywatch serve` serves the built site
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
DEFAULT_BASE = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}{DOCS_PATH}"
REFERENCE = "reference/"
INSTALL = "install/"  # the page `querywatch check` links to: how to enable what it checks
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "[::]"})


def base_url(docs_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The docs base URL (ending in ``/``): ``docs_url`` when set, else ``/docs/`` on the web
    server's own address (a wildcard bind is reached on 127.0.0.1)."""
    if docs_url:
        return docs_url if docs_url.endswith("/") else docs_url + "/"
    host = DEFAULT_HOST if host in _ANY_ADDRESS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{DOCS_PATH}"


def page_url(page: str, base: str = DEFAULT_BASE) -> str:
    """The URL of a site page given as its directory URL (``install/``, ``runbook/``)."""
    return (base if base.endswith("/") else base + "/") + page.lstrip("/")


def reference_url(doc_id: str, base: str = DEFAULT_BASE) -> str:
    """The URL of the page of ``<kind>/<name>`` (whether the code emits it is not checked here:
    querywatch.docs.link does)."""
    return page_url(f"{REFERENCE}{doc_id}/", base)


def anchor(heading: str) -> str:
    """The id MkDocs (Python-Markdown's toc) gives a heading: ``cpu cores`` -> ``cpu-cores``."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def check_link(name: str, base: str = DEFAULT_BASE) -> str:
    """The install page's section on one ``querywatch check`` finding (a heading per name)."""
    return page_url(f"{INSTALL}#{anchor(name)}", base)
