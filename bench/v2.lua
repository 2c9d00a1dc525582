-- wrk: POST an Open Inference Protocol v2 request, the number 5 as a one-element FP32 tensor
-- (the same input as post.lua's `data=5`).
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[5]}]}'
wrk.headers["Content-Type"] = "application/json"
