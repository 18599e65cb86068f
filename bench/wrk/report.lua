-- report.lua: makes wrk print one machine-readable JSON line when it finishes.
--
-- Usage: wrk -t1 -c64 -d10s -s bench/wrk/report.lua http://127.0.0.1:8080/
--
-- The line carries the same fields as `loadgen`'s report, so `cargo xtask bench`
-- parses either the same way. Latencies are in microseconds (wrk's native unit).
-- "errors" adds up connect, read, write and timeout errors and error statuses;
-- wrk counts a status as an error when it is 400 or above (it does not track 3xx
-- separately without a response() hook, which would slow every request down).

function done(summary, latency, requests)
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.timeout + e.status
   local seconds = summary.duration / 1e6
   local rps = 0
   if seconds > 0 then
      rps = summary.requests / seconds
   end
   io.write(string.format(
      '{"requests":%d,"errors":%d,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_timeout":%d,"errors_status":%d,' ..
      '"duration_us":%d,"rps":%.1f,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
      summary.requests, errors, e.connect, e.read, e.write, e.timeout, e.status,
      summary.duration, rps, latency:percentile(50), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
