-- Argo CD health of a berth.dev Backup (Argo CD runs it with the object as `obj`).
-- Healthy: Ready=True at the current generation (phase Completed). Degraded: phase Failed or
-- PartiallyFailed, Degraded=True or an InvalidSpec condition. Progressing: anything else (New,
-- InProgress). A Backup has no pause field, so it is never Suspended.
local hs = { status = "Progressing", message = "waiting for the Berth operator to report status" }
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.message = "waiting for the Berth operator to observe generation " .. generation
  return hs
end

-- Whether condition `c` was computed for the current generation.
local function is_current(c)
  return generation == nil or c.observedGeneration == nil or c.observedGeneration == generation
end

local function condition(type_)
  for _, c in ipairs(status.conditions) do
    if c.type == type_ and is_current(c) then
      return c
    end
  end
  return nil
end

for _, c in ipairs(status.conditions) do
  if c.reason == "InvalidSpec" and is_current(c) then
    return { status = "Degraded", message = c.message }
  end
end
local ready = condition("Ready")
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  return { status = "Degraded", message = degraded.message }
end
if status.phase == "Failed" or status.phase == "PartiallyFailed" then
  return { status = "Degraded", message = status.phase .. ": " .. (ready ~= nil and ready.message or "no message") }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if ready ~= nil then
  hs.message = ready.message
end
return hs
