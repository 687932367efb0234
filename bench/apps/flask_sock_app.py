"""``flask_app``'s app with ``/ws/echo`` served by flask-sock (simple-websocket).

What the gunicorn gthread and gevent rows load for scenario 10: flask-sock
needs the raw socket, which gunicorn's own workers put in the WSGI environ
(``gunicorn.socket``); its handlers are sync and hold a thread (gthread) or
a greenlet (gevent) for as long as the WebSocket is open.
"""

from __future__ import annotations

from flask_app import create_app

app = create_app("flask-sock")
