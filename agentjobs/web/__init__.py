"""The web dashboard (`agentjobs ui`, issue 14) and the static report (`report --html`).

Everything shown comes from the query layer (`agentjobs/query.py`); nothing here reads state
files or records, or re-derives a rule. Pages are rendered on the server with Jinja2
(autoescaped: agents print anything); one small vendored script (`static/app.js`) follows the
live events and highlights a run's attempts on the timeline; there is no JS build chain.

- `render.py`: the Jinja2 environment, filters and view models (the timeline's geometry);
  imports no web server, so `report --html` needs only Jinja2.
- `report.py`: the static report, one self-contained file.
- `security.py`: the access token, the session cookie and CSRF tokens (standard library).
- `events.py`: the live event feed behind `GET /api/events` (SSE).
- `app.py`: the Starlette application (`create_app`), its pages, actions and JSON API.
- `server.py`: `agentjobs ui`: binds, decides on the token, runs uvicorn.

Starlette, uvicorn and Jinja2 come with the `ui` extra (`pip install 'agentjobs[ui]'`) and are
imported only by `agentjobs ui` and `agentjobs report`: never on the tick or status path.
"""

from __future__ import annotations

MISSING = "the dashboard needs the `ui` extra: pip install 'agentjobs[ui]' ({name} is missing)"
