"""Hypercorn settings for the Hypercorn + Quart row (``-c file:hypercorn_conf.py``).

Aligned with the gunicorn rows: one worker on uvloop, gunicorn's default
backlog, a long keep-alive, and no cap on requests per connection (Hypercorn
closes a connection after 1,000 requests by default, which would make wrk
reconnect mid-run).
"""

workers = 1
worker_class = "uvloop"
backlog = 2048
keep_alive_timeout = 75
keep_alive_max_requests = 1_000_000_000
accesslog = None
errorlog = "-"
loglevel = "WARNING"
