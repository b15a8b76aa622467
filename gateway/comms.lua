-- Lua filter of the comms gateway (see envoy.yaml.in). It sits before the
-- JSON transcoder, so it sees requests before it and responses after it.

local NS = "comms.gateway"  -- dynamic metadata namespace

-- What a caller who is still waiting is told when the server drops its call
-- unanswered (CANCELLED): grpc does that to calls that reach a server as it
-- begins a graceful stop, before they run. Not the caller's doing, and not a
-- bug: retry later, like any other unavailability.
local DROPPED = "the comms service is unavailable, try again later"

-- The error words comms.lua writes itself (comms.v1.ErrorCode; test_httpapi checks them).
-- The gRPC status -> HTTP status and word table comes with each API route's metadata
-- (errors, from the proto); a code not in it becomes a 500 that leaks nothing.
local INVALID, TOO_LARGE, INTERNAL = "validation_error", "payload_too_large", "internal"

local JSON_ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

-- Error bodies end with a newline, like the ones local_reply_config writes.
local function json_string(s)
  -- UTF-8 bytes >= 0x80 pass through untouched; only quotes, backslashes and
  -- control characters need escaping.
  return '"' .. s:gsub('[%c"\\]', function(c)
    return JSON_ESC[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function unescape_key(s)
  -- Enough to see that "st\u0065ps" is "steps", as the transcoder would.
  if not s:find("\\", 1, true) then return s end
  s = s:gsub("\\u(%x%x%x%x)", function(h)
    local n = tonumber(h, 16)
    if n < 128 then return string.char(n) end
  end)
  return (s:gsub("\\(.)", "%1"))
end

-- Does the top-level object have its list (list, e.g. "steps"; nil for none)?
-- The transcoder reads a missing list, null and [] all as an empty list, and
-- {} as one element, so only the raw body can tell. Returns "ok", "missing",
-- "not_array", "malformed" for tokens JSON never allows but the transcoder
-- accepts ('single quotes', unquoted keys: they would hide the list's key),
-- "refused" and a message for what the transcoder would misread silently
-- (a null or list item of the list: skipped or flattened) or refuse without
-- naming the field (a list for a field that takes one value:
-- fields() has them by the path as sent, "name" or "steps[].position"), or nil when the
-- body is not an object or is cut short (the transcoder reports those with
-- its own message). A third value is the body to forward instead, when it has
-- members with an empty name in the body or a step (the transcoder would read
-- them as the object itself), or top-level members named in bound, the fields
-- the path sets (the transcoder would let the body's value win over the
-- path's): they are dropped, as unknown fields are ignored.
local function list_state(body, list, fields, bound)
  local i = body:find("%S")
  if not i or body:sub(i, i) ~= "{" then return nil end
  local depth, state, n = 0, "missing", #body
  -- Where the list opens, whether we are in it, its current item.
  local list_at, in_list, item, problem = nil, false, 0, nil
  -- Spans of members to drop, the one being read ({from, depth,
  -- kept}), and whether the object at each depth has a member kept before it:
  -- then the comma before the dropped one goes with it, else the one after.
  local cuts, cut, kept = {}, nil, {}
  while true do
    local j = body:find('["{}%[%]]', i)
    if not j then return nil end
    -- Between strings and brackets only JSON punctuation, numbers and
    -- true/false/null may appear.
    local gap = body:sub(i, j - 1)
    if gap:find("[^%s,:%d%.eE%+%-truefalsn]") then return "malformed" end
    if in_list and depth == 2 then  -- between items of the list
      local null_at = gap:find("null", 1, true)
      item = item + select(2, gap:sub(1, (null_at or 0) - 1):gsub(",", ""))
      if null_at then
        problem = problem or string.format("%s[%d]: must be an object (got null)", list, item)
      end
    end
    local c = body:sub(j, j)
    if c == '"' then
      local k = j + 1
      while true do  -- find the closing quote, skipping escapes
        local q = body:find('[\\"]', k)
        if not q then return nil end
        if body:sub(q, q) == '"' then k = q break end
        k = q + 2
      end
      local colon = body:find("%S", k + 1)
      local is_key = colon and body:sub(colon, colon) == ":"
      if is_key and (depth == 1 or (in_list and depth == 3)) then
        local name = unescape_key(body:sub(j + 1, k - 1))
        local drop = name == "" or (depth == 1 and bound[name])
        -- The comma before this member (nil if missing: the transcoder says so).
        local comma = (cut or drop) and gap:find(",")
        comma = comma and i + comma - 1
        if cut and cut[2] == depth then  -- the member being dropped ends here
          if cut[3] and not comma then return nil end
          cuts[#cuts + 1] = {cut[1], cut[3] and comma - 1 or j - 1}
          cut = nil
        end
        if not drop then
          kept[depth] = true
          if body:find("^%s*%[", colon + 1) then  -- a list: is it for a one-value field?
            local field = not (depth == 1 and name == list)
              and fields()[depth == 1 and name or list .. "[]." .. name]
            if field then
              local where = depth == 1 and "" or string.format("%s[%d].", list, item)
              problem = problem or string.format("%s%s: %s (got a list)", where, field.name, field.rule)
            end
          end
        elseif kept[depth] and not comma then
          return nil
        else
          cut = {kept[depth] and comma or j, depth, kept[depth]}
        end
      end
      if depth == 1 and is_key and unescape_key(body:sub(j + 1, k - 1)) == list then
        local v = body:find("%S", colon + 1)
        if not v then return nil end
        local first = body:sub(v, v)
        if first == "[" then state, list_at = "ok", v
        elseif body:sub(v, v + 3) == "null" then state = "missing"
        else state = "not_array" end
      end
      i = k + 1
    else
      if in_list and depth == 2 and c == "[" then
        problem = problem or string.format("%s[%d]: must be an object (got a list)", list, item)
      end
      if c == "}" and cut and cut[2] == depth then
        cuts[#cuts + 1] = {cut[1], j - 1}
        cut = nil
      end
      depth = depth + ((c == "{" or c == "[") and 1 or -1)
      if c == "{" then kept[depth] = false end
      i = j + 1
      if j == list_at then in_list, item = true, 0 end
      if depth < 2 then in_list = false end
      if depth < 0 then return nil end
      if depth == 0 then
        -- The object closed: only whitespace may follow.
        if body:find("%S", i) then return nil end
        if problem then return "refused", problem end
        if #cuts == 0 then return state end
        local parts, from = {}, 1
        for _, span in ipairs(cuts) do
          parts[#parts + 1] = body:sub(from, span[1] - 1)
          from = span[2] + 1
        end
        parts[#parts + 1] = body:sub(from)
        return state, nil, table.concat(parts)
      end
    end
    if i > n then return nil end
  end
end

-- Make a transcoder failure read like the server's messages: "<field path>:
-- <rule>". Parse errors have no path and append a multi-line excerpt of the
-- body: keep their first line only.
local function tidy(msg, fields)
  local path, rest = msg:match("^([%w_%.%[%]]*): (.*)$")
  if not path then return "body: malformed JSON: " .. msg:match("^[^\n]*") end
  local field = rest:match("^invalid value Starting an object on a scalar field for type (.+)$")
  if field then
    return (path == "" and field or path .. "." .. field) .. ": must not be an object"
  end
  if path == "" then path = "body" end
  if rest == "Root element must be a message." then return "body: must be a JSON object" end
  if rest == "Proto field is not repeating, cannot start list." then
    return path .. ": a list was given for a field that is not a list"
  end
  local value = rest:match("^invalid value (.*) for type %S+$")
  local field = value and fields and fields[(path:gsub("%[%d+%]", "[]"))]
  if field then return path .. ": " .. field.rule .. " (got " .. value .. ")" end
  return path .. ": " .. rest
end

-- A body declared larger than the route's limit (route metadata max_body_bytes). Envoy
-- does not read what is left of a request after answering it, so a client that sends the
-- whole body before reading (urllib, no Expect: 100-continue) would meet a reset instead
-- of a local 413. So the request is read to its end and thrown away, and since only an
-- upstream answers after that, it goes on as a bodiless health check (read-only, open);
-- oversized_answer turns that answer into the 413.
local function drain_oversized(handle, headers)
  local limit = tonumber(handle:metadata():get("max_body_bytes") or "")
  local size = tonumber(headers:get("content-length") or "")
  if not (limit and size and size > limit) then return false end
  handle:streamInfo():dynamicMetadata():set(NS, "too_large", tostring(limit))
  headers:replace(":path", "/grpc.health.v1.Health/Check")
  headers:replace("content-type", "application/grpc")
  headers:remove("content-length")
  handle:clearRouteCache()
  for chunk in handle:bodyChunks() do chunk:setBytes("") end
  return true
end

-- The same answer as the 413 mapper of local_reply_config gives.
local function oversized_answer(handle, headers, limit)
  headers:replace(":status", "413")
  headers:replace("content-type", "application/json")
  for _, name in ipairs({"grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding"}) do
    headers:remove(name)
  end
  local body = handle:body(true)
  if body then
    local message = "request body is larger than " .. limit .. " bytes"
    body:setBytes('{"error":"' .. TOO_LARGE .. '","message":' .. json_string(message) .. "}\n")
  end
end

-- Would the server surely refuse the caller's token, whatever it is? No single
-- Authorization header, not "Bearer <token>" (auth.bearer_token), or a token
-- that is not three dot-separated base64url parts (PyJWT refuses any other
-- character but trailing "=" padding; HTTP/1 joins repeated headers with a
-- comma). Only what the server can never accept: in doubt, leave it the verdict.
local function surely_unauthenticated(headers)
  return headers:getNumValues("authorization") ~= 1 or not headers:get("authorization"):find(
    "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+[%w_-]+=*%.[%w_-]*=*%.[%w_-]*=*%s*$")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- For the access log: the caller's method, before the transcoder makes it POST.
  handle:streamInfo():dynamicMetadata():set(NS, "method", headers:get(":method"))
  -- Remember the caller kind: transcoded responses (and requests, once past
  -- the transcoder) also carry application/grpc, so later stages cannot tell.
  -- local_reply_config reads it too.
  if (headers:get("content-type") or ""):find("^application/grpc") then
    handle:streamInfo():dynamicMetadata():set(NS, "caller", "grpc")
    return  -- native gRPC is passed through untouched
  end
  handle:streamInfo():dynamicMetadata():set(NS, "caller", "http")
  if drain_oversized(handle, headers) then return end

  -- Only the routes to the server (envoy.yaml.in marks them) need a token.
  if not handle:metadata():get("rpc") then return end
  local path = (headers:get(":path") or ""):match("^[^?]*")
  if surely_unauthenticated(headers) then
    -- 401 before any 422: send the server a call it refuses for the token
    -- alone, without the caller's query and body (which the transcoder and the
    -- checks below would judge first), so that it words the 401 as always.
    headers:replace(":path", path)
    local body = handle:body()
    if body then body:setBytes("") end
    return
  end
  -- The rest is for the routes that read a body (route metadata "body"); "list"
  -- is its list, if any, and "list_required" whether a missing one is refused.
  if not handle:metadata():get("body") then return end
  local list = handle:metadata():get("list")
  local required = handle:metadata():get("list_required")

  -- Local 422 replies carry the bare message; envoy_on_response wraps it.
  local body = handle:body()
  local text = body and body:getBytes(0, body:length()) or ""
  if not text:find("%S") then
    -- No body at all is {} where nothing is required (a custom method's POST).
    if required then handle:respond({[":status"] = "422"}, "body: must be a JSON object") end
    return
  end
  -- The route's fields are read only for a list value that is not the list.
  local state, problem, forward = list_state(text, list, function()
    return handle:metadata():get("fields")
  end, handle:metadata():get("bound") or {})
  if state == "refused" then
    handle:respond({[":status"] = "422"}, problem)
  elseif state == "missing" and required then
    handle:respond({[":status"] = "422"}, list .. ": is required")
  elseif state == "not_array" and list then
    handle:respond({[":status"] = "422"}, list .. ": must be an array")
  elseif state == "malformed" then
    handle:respond({[":status"] = "422"}, "body: malformed JSON")
  elseif forward then
    body:setBytes(forward)
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  -- Internal hints of the server, never shown: the HTTP status it wants, and for
  -- errors a more precise code than its gRPC status gives.
  local http_code = headers:get("x-http-code")
  local error_code = headers:get("x-error-code")
  headers:remove("x-http-code")
  headers:remove("x-error-code")

  local md = handle:streamInfo():dynamicMetadata():get(NS)
  if md and md.too_large then return oversized_answer(handle, headers, md.too_large) end
  if not (md and md.caller == "http") then
    -- gRPC callers get gRPC as is, but for a dropped call (see DROPPED).
    if headers:get("grpc-status") == "1" then
      headers:replace("grpc-status", "14")
      headers:replace("grpc-message", DROPPED)
    end
    return
  end

  -- A local 422 with a text body: a transcoder failure (400 turned into 422
  -- by local_reply_config) or one of ours above. Give it the JSON shape.
  if headers:get(":status") == "422" and (headers:get("content-type") or ""):find("^text/plain") then
    headers:replace("content-type", "application/json")  -- headers first: body() ends their scope
    local body = handle:body(true)
    local text = body:getBytes(0, body:length())
    local message = tidy(text, handle:metadata():get("fields"))
    body:setBytes('{"error":"' .. INVALID .. '","message":' .. json_string(message) .. "}\n")
    return
  end

  -- HTTP callers never see gRPC framing headers, on success or error.
  local grpc_status = headers:get("grpc-status")
  -- For the access log, which cannot see it once removed: the server's status
  -- (none for Envoy's own replies, which carry no upstream service time).
  if grpc_status or headers:get("x-envoy-upstream-service-time") then
    handle:streamInfo():dynamicMetadata():set(NS, "grpc_status", tonumber(grpc_status or "0"))
  end
  local grpc_message = headers:get("grpc-message") or ""
  for _, name in ipairs({"grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding"}) do
    headers:remove(name)
  end

  if grpc_status == nil or grpc_status == "0" then
    -- Success: the transcoder always says 200; the server asks for e.g. 201.
    if http_code and http_code:match("^2%d%d$") and headers:get(":status") == "200" then
      headers:replace(":status", http_code)
    end
    return
  end

  -- An upstream gRPC error (headers only, empty body): reshape it.
  local errors = handle:metadata():get("errors")
  local map = errors and errors[grpc_status]
  local status, code, message = 500, INTERNAL, "internal error"
  if map then
    status, code = map.status, map.error
    if error_code and error_code:match("^[%l_]+$") then code = error_code end
    if http_code and http_code:match("^[45]%d%d$") then status = tonumber(http_code) end
    if grpc_status == "1" then
      message = DROPPED
    else
      message = grpc_message:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    end
    if message == "" then message = (code:gsub("_", " ")) end
  end
  headers:replace(":status", tostring(status))
  headers:replace("content-type", "application/json")
  -- nil only if the server sent headers, then failed (status in trailers):
  -- Lua cannot add a body then, the status stays right but the body empty.
  local body = handle:body(true)
  if body then
    body:setBytes('{"error":"' .. code .. '","message":' .. json_string(message) .. "}\n")
  end
end
