-- wrk script for the upload scenario: every request is a POST of a 1 MiB body.
-- The body is built once; wrk sends it with a Content-Length on each request.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
