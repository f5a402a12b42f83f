-- Keeps the session cookie the server sets and sends it back, as a browser would, so that
-- every request after the first loads and saves an existing session. One cookie per wrk
-- thread (each thread has its own Lua state).
local cookie = nil

response = function(status, headers, body)
  local set = headers["Set-Cookie"]
  if set then
    cookie = set:match("^([^;]+)")
  end
end

request = function()
  if cookie then
    return wrk.format("GET", wrk.path, { ["Cookie"] = cookie })
  end
  return wrk.format("GET", wrk.path)
end
