-- wrk: POST a form field `data` (as `curl -d data=5` does).
wrk.method = "POST"
wrk.body = "data=5"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
