-- wrk script for scenario 6: POST a 10 MiB body to /upload on every request.
wrk.method = "POST"
wrk.body = string.rep("u", 10 * 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
