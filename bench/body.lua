-- wrk: POST the file $BODY_FILE as the body, with Content-Type $BODY_TYPE.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BODY_TYPE") or "application/octet-stream"
