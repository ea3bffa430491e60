-- The heads of several rooms in one call, each as history.lua reports a page without
-- messages: {{epoch, top, first, 0}, ...}. A connect storm subscribes inboxes by the
-- hundred, and each script call costs Redis more than the head read it runs.
-- KEYS: meta, stream per room. ARGV: max age ms per room. (`head`: head.lua, prepended.)
local out = {}
for i = 1, #ARGV do
  local epoch, top, first = head(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[i]))
  out[i] = {epoch, top, first, 0}
end
return out
