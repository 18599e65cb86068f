-- post.lua: wrk sends POST requests with a fixed-size body, then reports as report.lua.
--
-- Usage: wrk -t1 -c64 -d10s -s bench/wrk/post.lua http://127.0.0.1:8080/ -- 10240
-- The optional argument after `--` is the body size in bytes (default 10240).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function init(args)
   local size = tonumber(args[1]) or 10240
   wrk.method = "POST"
   wrk.body = string.rep("x", size)
   wrk.headers["Content-Type"] = "application/octet-stream"
end
